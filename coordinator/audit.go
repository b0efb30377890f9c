package coordinator

import (
	"context"
	"time"

	"github.com/wiremesh/wiremesh/coordinator/store"
)

// The audit log: every change made through the admin socket (the CLI) or
// the web console is stored with who made it, what it was and when, and
// shown on the console's audit page. The actor travels in the request's
// context: the admin handler marks its requests "cli", the console
// "console:USER". Changes the server makes by itself (expiry, ephemeral
// clean-up, --policy at start) carry no actor and are not logged here.

type actorKey struct{}

// withActor returns ctx carrying who makes the changes done under it.
func withActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

func actorOf(ctx context.Context) string {
	a, _ := ctx.Value(actorKey{}).(string)
	return a
}

// auditTimeout bounds the audit write after a change: the change has
// happened, so the write must not wait on a request that went away.
const auditTimeout = 5 * time.Second

// audit records action on target by ctx's actor; without one it does
// nothing. A failed write is logged: the change itself stands.
func (srv *Server) audit(ctx context.Context, action, target string) {
	actor := actorOf(ctx)
	if actor == "" {
		return
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditTimeout)
	defer cancel()
	e := &store.AuditEntry{Time: srv.now(), Actor: actor, Action: action, Target: target}
	if err := srv.store.AddAudit(actx, e); err != nil {
		srv.log.Warn("audit log write failed", "action", action, "target", target, "err", err)
	}
}

// maxAuditShown bounds the audit page (and AuditLog's answer).
const maxAuditShown = 500

// AuditLog returns the newest audit entries, newest first.
func (srv *Server) AuditLog(ctx context.Context) ([]store.AuditEntry, error) {
	return srv.store.Audit(ctx, maxAuditShown)
}
