package client_test

import (
	"testing"

	"github.com/flarecast/flarecast/client"
	"github.com/flarecast/flarecast/codec"
)

// The client spells the protocol's codes and reasons itself, so that a
// program using it does not link the server's codec (and its JSON
// decoder); this keeps the two spellings one.
func TestProtocolConstantsMatchServer(t *testing.T) {
	for _, p := range [][2]string{
		{client.CodeInvalidMessage, codec.CodeInvalidMessage},
		{client.CodeUnsupported, codec.CodeUnsupported},
		{client.CodeNotFound, codec.CodeNotFound},
		{client.CodeRateLimited, codec.CodeRateLimited},
		{client.CodeUnauthorized, codec.CodeUnauthorized},
		{client.CodeLimitExceeded, codec.CodeLimitExceeded},
		{client.CodeHistoryGap, codec.CodeHistoryGap},
		{client.ReasonServerShutdown, codec.ReasonServerShutdown},
		{client.ReasonSessionTimeout, codec.ReasonSessionTimeout},
		{client.ReasonSlowConsumer, codec.ReasonSlowConsumer},
		{client.ReasonSessionTakenOver, codec.ReasonSessionTakenOver},
		{client.ReasonTokenExpired, codec.ReasonTokenExpired},
		{client.ReasonPolicyViolation, codec.ReasonPolicyViolation},
	} {
		if p[0] != p[1] {
			t.Errorf("client says %q where the server says %q", p[0], p[1])
		}
	}
}
