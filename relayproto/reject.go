package relayproto

// Reason is why a relay refused a client hello. It travels in FrameReject
// and labels the relay's reject counter.
type Reason byte

// Rejection reasons. Values are part of the wire format: never renumber.
const (
	ReasonOther             Reason = 0
	ReasonTokenMissing      Reason = 1
	ReasonTokenMalformed    Reason = 2
	ReasonTokenExpired      Reason = 3
	ReasonTokenFuture       Reason = 4
	ReasonTokenForeign      Reason = 5
	ReasonTokenBadSignature Reason = 6
	ReasonTokenWrongNode    Reason = 7
	ReasonTokenWrongRegion  Reason = 8
	ReasonBadProof          Reason = 9  // the proof does not open with the node key
	ReasonReplay            Reason = 10 // the proof is genuine but for another TLS session
	ReasonBadHello          Reason = 11 // the hello frame is malformed
	ReasonVersion           Reason = 12 // unsupported protocol version
	ReasonDraining          Reason = 13 // the relay is shutting down
	ReasonTimeout           Reason = 14 // no hello in time
	ReasonRevoked           Reason = 15 // the coordinator revoked this node key (deleted or expired)
)

var reasonLabels = [...]string{
	ReasonOther:             "other",
	ReasonTokenMissing:      "token_missing",
	ReasonTokenMalformed:    "token_malformed",
	ReasonTokenExpired:      "token_expired",
	ReasonTokenFuture:       "token_future",
	ReasonTokenForeign:      "token_foreign",
	ReasonTokenBadSignature: "token_bad_signature",
	ReasonTokenWrongNode:    "token_wrong_node",
	ReasonTokenWrongRegion:  "token_wrong_region",
	ReasonBadProof:          "bad_proof",
	ReasonReplay:            "replay",
	ReasonBadHello:          "bad_hello",
	ReasonVersion:           "version",
	ReasonDraining:          "draining",
	ReasonTimeout:           "timeout",
	ReasonRevoked:           "revoked",
}

// String returns the stable label, which equals admit.Reason for token
// reasons.
func (r Reason) String() string {
	if int(r) < len(reasonLabels) && reasonLabels[r] != "" {
		return reasonLabels[r]
	}
	return "other"
}

// Reasons lists every reason, for pre-creating metric series.
func Reasons() []Reason {
	out := make([]Reason, len(reasonLabels))
	for i := range reasonLabels {
		out[i] = Reason(i)
	}
	return out
}

// ReasonFromLabel maps a label (such as admit.Reason's) back to a Reason.
func ReasonFromLabel(s string) Reason {
	for i, l := range reasonLabels {
		if l == s {
			return Reason(i)
		}
	}
	return ReasonOther
}
