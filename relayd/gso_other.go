//go:build !linux

package relayd

const gsoSupported = false

func gsoControl([]byte, uint16) []byte { return nil }
func gsoShouldDisable(error) bool      { return true }
func msgTruncated(int) bool            { return false }
func gsoTooBig(error) bool             { return false }
