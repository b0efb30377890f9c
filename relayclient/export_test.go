package relayclient

import "net"

// RebindFastForTest moves c's fast path to a fresh local UDP socket, as a
// NAT that rebinds the client's mapping would.
func RebindFastForTest(c *Conn) error {
	old := c.fast.Load()
	udp, err := net.DialUDP("udp", nil, old.udp.RemoteAddr().(*net.UDPAddr))
	if err != nil {
		return err
	}
	fp := &fastPath{udp: udp, session: old.session}
	c.fast.Store(fp)
	old.udp.Close()
	c.wg.Add(2)
	go func() { defer c.wg.Done(); c.readFast(udp, fp.session) }()
	go func() { defer c.wg.Done(); <-c.done; udp.Close() }()
	return nil
}
