// Package auth verifies the JSON Web Tokens that WebSocket clients present
// when `flarecast serve --auth jwt` is on, and applies the scope a token
// carries to the subscriptions of its holder.
//
// # Keys and algorithms
//
// A Verifier holds up to three kinds of keys, and each kind verifies exactly
// one algorithm: an HMAC secret verifies HS256, RSA public keys (2048 bits or
// more) verify RS256, ECDSA P-256 public keys verify ES256. The algorithm a
// token names in its header only selects which kind of key is tried; a key is
// never used with another algorithm. So "none" is refused (no key of that
// kind exists), and so is the classic HS/RS confusion — an HS256 token whose
// "secret" is the server's public RSA key — because an RSA key is never handed
// to the HMAC verifier. Keys come from a secret (or a file holding it), a PEM
// public key or certificate, and a JWKS document; JWKS keys are chosen by
// "kid" when the token names one.
//
// # Claims
//
// A token must carry "sub" (sessions are bound to it: a resume or a token
// refresh must present the same subject) and "exp" (a live session ends when
// its token expires unless the client refreshes it). "nbf", and "iss"/"aud"
// when the server is configured with them, are checked too. The optional
// claim "flarecast" is a scope with the shape of a subscription's filters,
// for example {"sources":["team-payments"],"labels":{"tenant":"acme"}}; it is
// decoded by codec.DecodeFilter, so it accepts exactly what a subscription
// accepts. A token without it is unrestricted.
//
// # Scopes
//
// Intersect narrows a subscription's filter by a scope so that the result
// matches only events that both match. The engine stores the intersection in
// place of what the client asked for, so no subscription, backfill or resume
// can reach an event outside the scope.
package auth
