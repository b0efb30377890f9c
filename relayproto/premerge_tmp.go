package relayproto

// Until main (hard-relay) is merged: defined there in fastpath.go.
const MaxFastDatagram = 2048
