package netmap

import (
	"time"

	"github.com/wiremesh/wiremesh/key"
)

// Interactive login: a node with no auth key asks for a login
// (POST /coord/v1/login, LoginRequest, with a ProofHeader made with
// NodeKey) and gets a one-time URL to show its user. It then long-polls
// POST /coord/v1/login/wait (LoginWaitRequest, with a proof) until a
// signed-in console user approves the URL: the answer then carries a
// single-use auth key for that user, sealed from the coordinator key to the
// node key, which the node opens and registers with as usual. An
// unapproved login expires (HTTP 410, CodeLoginExpired).
//
// Added without a version change: older clients never send these.

// LoginRequest starts an interactive login.
type LoginRequest struct {
	Version  CapabilityVersion `json:"version"`
	NodeKey  key.NodePublic    `json:"node_key"`
	Hostname string            `json:"hostname"`
	OS       string            `json:"os"`
}

// LoginResponse carries the URL the node prints and the code it waits on.
type LoginResponse struct {
	URL     string    `json:"url"`
	Code    string    `json:"code"`
	Expires time.Time `json:"expires"`
}

// LoginWaitRequest waits for the login with Code to be approved.
type LoginWaitRequest struct {
	Code string `json:"code"`
}

// Login states in LoginWaitResponse.
const (
	LoginPending  = "pending"  // not approved yet: ask again
	LoginApproved = "approved" // SealedAuthKey is set
)

// LoginWaitResponse answers a wait: still pending (after a while), or
// approved.
type LoginWaitResponse struct {
	Status string `json:"status"`
	// User approved the login and owns the node.
	User string `json:"user,omitempty"`
	// SealedAuthKey is an auth key's text form sealed with key.Seal from
	// the coordinator key to the node key (open it with key.Open).
	SealedAuthKey []byte `json:"sealed_auth_key,omitempty"`
}

// CodeLoginExpired: the login was not approved in time (HTTP 410).
const CodeLoginExpired ErrorCode = "login_expired"
