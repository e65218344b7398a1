package codec

import "unicode/utf8"

// validUTF8 is the check RFC 6455 §8.1 requires of text messages and close
// reasons. A fragmented text message is checked once it is complete.
func validUTF8(b []byte) bool { return utf8.Valid(b) }

// ValidText reports whether a text message's payload is valid UTF-8.
func ValidText(b []byte) bool { return validUTF8(b) }
