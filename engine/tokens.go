package engine

import (
	"context"
	"errors"
	"time"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"

	"github.com/flarecast/flarecast/auth"
	"github.com/flarecast/flarecast/codec"
)

// refreshAuth handles {"type":"auth","token":…}: a token of the same
// subject and scope replaces the connection's, moving its expiry; anything
// else is refused with UNAUTHORIZED and the current token stays.
func (c *conn) refreshAuth(token string) {
	v := c.eng().cfg.Auth
	if v == nil {
		c.sendError(codec.CodeUnsupported, "authentication is not enabled on this server")
		return
	}
	claims, err := v.Verify(token)
	if err != nil {
		why := "invalid token"
		var aerr *auth.Error
		if errors.As(err, &aerr) {
			why = aerr.Reason
		}
		c.eng().metrics.refuse(refuseAuthRefresh)
		c.sendError(codec.CodeUnauthorized, why)
		return
	}
	if !c.auth.SameHolder(claims) {
		c.eng().metrics.refuse(refuseAuthRefresh)
		c.sendError(codec.CodeUnauthorized, "the new token must have the session's subject and scope")
		return
	}
	c.auth = claims
	c.write(codec.AppendFrame(c.loop.scratch[:0], codec.OpText, appendAuthenticated(nil, claims.ExpiresAt)))
}

// appendAuthenticated appends the reply to a successful auth message.
func appendAuthenticated(dst []byte, expires time.Time) []byte {
	dst = append(dst, `{"type":"authenticated","expires_at":"`...)
	dst = expires.UTC().AppendFormat(dst, time.RFC3339)
	return append(dst, '"', '}')
}

// refuseSession tells c, from any goroutine, that its session request is
// refused, and closes it with 1008.
func (l *loop) refuseSession(c *conn, message string) {
	_ = l.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
		if !c.closed && c.state == stateOpen {
			c.sendError(codec.CodeUnauthorized, message)
			c.closeWith(codec.ReasonPolicyViolation, ws.StatusPolicyViolation, "session refused")
		}
		return nil
	}))
}
