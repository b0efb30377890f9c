//go:build linux

package router

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// NftTable is the name of the nftables table (family ip) the Router owns.
// It is rebuilt whole in one netlink transaction on every change, so the
// kernel never holds half a rule set. Its contents:
//
//	table ip wiremesh {
//	  set mesh { type ipv4_addr }                    addresses this mesh assigned
//	  counter spoofed
//	  chain input   { type filter hook input priority mangle
//	    iifname TUN return; iifname "lo" return
//	    ip saddr @mesh counter name spoofed drop }
//	  chain forward { type filter hook forward priority mangle
//	    iifname != TUN ip saddr @mesh counter name spoofed drop
//	    iifname TUN ip daddr PREFIX meta mark set mark & ~0xf000000 | 0x2000000   (per masqueraded prefix)
//	  }
//	  chain postrouting { type nat hook postrouting priority srcnat
//	    oifname != TUN meta mark & 0xf000000 == 0x2000000 masquerade }
//	  chain output { type filter hook output priority mangle          (routes accepted)
//	    meta mark & 0xf000000 == 0x1000000 ct mark set ct mark & ~0xf000000 | 0x1000000 }
//	  chain prerouting { type filter hook prerouting priority mangle  (routes accepted)
//	    ct mark & 0xf000000 == 0x1000000 meta mark set mark & ~0xf000000 | 0x1000000 }
//	}
//
// The output/prerouting pair copies the bypass mark from the node's own
// packets to their connection and back onto the replies. With
// net.ipv4.conf.all.src_valid_mark=1 (which Set turns on while routes are
// accepted, as wg-quick does) reverse-path filtering then checks a reply
// from the coordinator against the main table, where it is valid, instead
// of against Table, whose default route points into the tunnel: without it
// strict rp_filter (rp_filter=1, the default on some distributions) drops
// every reply to the node's own sockets while an exit node is in use.
const NftTable = "wiremesh"

// Chain and object names inside NftTable.
const (
	setMesh       = "mesh"
	counterSpoof  = "spoofed"
	chainInput    = "input"
	chainForward  = "forward"
	chainPostNAT  = "postrouting"
	chainOutput   = "output"
	chainPre      = "prerouting"
	nftRegister   = 1
	ifnameLen     = unix.IFNAMSIZ
	ipv4SrcOffset = 12
	ipv4DstOffset = 16
)

func table() *nftables.Table {
	return &nftables.Table{Name: NftTable, Family: nftables.TableFamilyIPv4}
}

// ifname is an interface name as nftables compares it: NUL-padded.
func ifname(n string) []byte {
	b := make([]byte, ifnameLen)
	copy(b, n)
	return b
}

// antiSpoofing: only the addresses this mesh assigned are protected, never
// the whole 100.64.0.0/10. Tailscale drops every 100.64.0.0/10 source that
// does not arrive on its interface; that breaks hosts whose ISP uses
// carrier-grade NAT (the ISP's own gateway and DNS live in 100.64.0.0/10)
// and cloud networks that hand out CGNAT space (tailscale issues #12829,
// #12555, #3104). A packet from one of our peers' addresses on a LAN
// interface is a spoof; a packet from some other 100.64.0.0/10 address is
// just someone else's network.
func (r *Router) antiSpoofing(s State) bool { return len(s.MeshAddrs) > 0 }

// needNft reports whether s needs the nft table at all.
func (r *Router) needNft(s State) bool {
	return r.antiSpoofing(s) || s.ExitNode || (s.SNAT && len(s.Advertise) > 0) || len(s.Routes) > 0
}

// nftShape is everything in s that the nft table depends on.
func nftShape(s State) string {
	return fmt.Sprint(s.Advertise, s.ExitNode, s.SNAT, s.MeshAddrs, len(s.Routes) > 0)
}

// setNft rebuilds the table for s, or deletes it when s needs none. A
// table already built for the same shape (and still there) is left alone.
func (r *Router) setNft(s State) error {
	shape := nftShape(s)
	if r.needNft(s) && shape == r.nftShape {
		if ok, err := nftInstalled(); err == nil && ok {
			return nil
		}
	}
	r.nftShape = ""
	// Carry the drop counter over the rebuild.
	if n, err := readSpoofCounter(); err == nil {
		r.spoofBase += n
	}
	if !r.needNft(s) {
		return deleteNft()
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("router: nftables: %w", err)
	}
	t := table()
	// Add (a no-op when it exists), delete, add again: the batch then
	// works whether or not a previous table is there, and replaces it
	// atomically.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	tun := ifname(r.cfg.TUN)

	mesh := &nftables.Set{Table: t, Name: setMesh, KeyType: nftables.TypeIPAddr}
	var elems []nftables.SetElement
	for _, a := range s.MeshAddrs {
		if a.Is4() {
			b := a.As4()
			elems = append(elems, nftables.SetElement{Key: b[:]})
		}
	}
	if err := c.AddSet(mesh, elems); err != nil {
		return fmt.Errorf("router: nft set: %w", err)
	}
	c.AddObj(&nftables.CounterObj{Table: t, Name: counterSpoof})

	accept := nftables.ChainPolicyAccept
	input := c.AddChain(&nftables.Chain{Name: chainInput, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityMangle, Policy: &accept})
	forward := c.AddChain(&nftables.Chain{Name: chainForward, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityMangle, Policy: &accept})
	post := c.AddChain(&nftables.Chain{Name: chainPostNAT, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})

	spoofDrop := func(extra ...expr.Any) []expr.Any {
		return append(extra,
			&expr.Payload{DestRegister: nftRegister, Base: expr.PayloadBaseNetworkHeader, Offset: ipv4SrcOffset, Len: 4},
			&expr.Lookup{SourceRegister: nftRegister, SetName: mesh.Name, SetID: mesh.ID},
			&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: counterSpoof},
			&expr.Verdict{Kind: expr.VerdictDrop},
		)
	}
	if r.antiSpoofing(s) {
		for _, dev := range [][]byte{tun, ifname("lo")} {
			c.AddRule(&nftables.Rule{Table: t, Chain: input, Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: nftRegister},
				&expr.Cmp{Op: expr.CmpOpEq, Register: nftRegister, Data: dev},
				&expr.Verdict{Kind: expr.VerdictReturn},
			}})
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: input, Exprs: spoofDrop()})
		c.AddRule(&nftables.Rule{Table: t, Chain: forward, Exprs: spoofDrop(
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: nftRegister},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: nftRegister, Data: tun},
		)})
	}

	var masq []netip.Prefix
	if s.SNAT {
		masq = append(masq, s.Advertise...)
	}
	if s.ExitNode {
		masq = append(masq, netip.PrefixFrom(netip.IPv4Unspecified(), 0))
	}
	for _, p := range masq {
		ex := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: nftRegister},
			&expr.Cmp{Op: expr.CmpOpEq, Register: nftRegister, Data: tun},
		}
		if p.Bits() > 0 {
			mask := netMask(p.Bits())
			net4 := p.Addr().As4()
			ex = append(ex,
				&expr.Payload{DestRegister: nftRegister, Base: expr.PayloadBaseNetworkHeader, Offset: ipv4DstOffset, Len: 4},
				&expr.Bitwise{SourceRegister: nftRegister, DestRegister: nftRegister, Len: 4, Mask: mask, Xor: make([]byte, 4)},
				&expr.Cmp{Op: expr.CmpOpEq, Register: nftRegister, Data: net4[:]},
			)
		}
		ex = append(ex,
			// mark = (mark & ^MarkMask) | MasqMark
			&expr.Meta{Key: expr.MetaKeyMARK, Register: nftRegister},
			&expr.Bitwise{SourceRegister: nftRegister, DestRegister: nftRegister, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(^MarkMask), Xor: binaryutil.NativeEndian.PutUint32(MasqMark)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: nftRegister},
		)
		c.AddRule(&nftables.Rule{Table: t, Chain: forward, Exprs: ex})
	}
	if len(masq) > 0 {
		c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: nftRegister},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: nftRegister, Data: tun},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: nftRegister},
			&expr.Bitwise{SourceRegister: nftRegister, DestRegister: nftRegister, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(MarkMask), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: nftRegister, Data: binaryutil.NativeEndian.PutUint32(MasqMark)},
			&expr.Masq{},
		}})
	}
	if len(s.Routes) > 0 {
		out := c.AddChain(&nftables.Chain{Name: chainOutput, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityMangle, Policy: &accept})
		pre := c.AddChain(&nftables.Chain{Name: chainPre, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle, Policy: &accept})
		c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: copyBypass(
			&expr.Meta{Key: expr.MetaKeyMARK, Register: nftRegister},
			&expr.Ct{Key: expr.CtKeyMARK, Register: nftRegister},
			&expr.Ct{Key: expr.CtKeyMARK, Register: nftRegister, SourceRegister: true})})
		c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: copyBypass(
			&expr.Ct{Key: expr.CtKeyMARK, Register: nftRegister},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: nftRegister},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: nftRegister})})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("router: install nft table %s: %w", NftTable, err)
	}
	r.nftShape = shape
	r.nftBuilds++
	return nil
}

// copyBypass returns "if FROM & MarkMask == BypassMark then TO = (TO &
// ^MarkMask) | BypassMark": load FROM, test it, load TO, rewrite it, store.
func copyBypass(loadFrom, loadTo, storeTo expr.Any) []expr.Any {
	return []expr.Any{
		loadFrom,
		&expr.Bitwise{SourceRegister: nftRegister, DestRegister: nftRegister, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(MarkMask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: nftRegister, Data: binaryutil.NativeEndian.PutUint32(BypassMark)},
		loadTo,
		&expr.Bitwise{SourceRegister: nftRegister, DestRegister: nftRegister, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^MarkMask), Xor: binaryutil.NativeEndian.PutUint32(BypassMark)},
		storeTo,
	}
}

func netMask(bits int) []byte {
	m := uint32(0xffffffff) << (32 - bits)
	return binaryutil.BigEndian.PutUint32(m)
}

// deleteNft removes the table if it exists; it is idempotent.
func deleteNft() error {
	if ok, err := nftInstalled(); err != nil {
		return fmt.Errorf("router: list nft table %s: %w", NftTable, err)
	} else if !ok {
		return nil
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("router: nftables: %w", err)
	}
	c.DelTable(table())
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("router: delete nft table %s: %w", NftTable, err)
	}
	return nil
}

// readSpoofCounter returns the packets the current table's anti-spoofing
// rules dropped.
func readSpoofCounter() (uint64, error) {
	c, err := nftables.New()
	if err != nil {
		return 0, err
	}
	o, err := c.GetObject(&nftables.CounterObj{Table: table(), Name: counterSpoof})
	if err != nil {
		return 0, err
	}
	if co, ok := o.(*nftables.CounterObj); ok {
		return co.Packets, nil
	}
	return 0, fmt.Errorf("router: counter %s has type %T", counterSpoof, o)
}

// SpoofedDrops returns how many packets claiming a mesh source address were
// dropped on a non-TUN interface since New.
func (r *Router) SpoofedDrops() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, _ := readSpoofCounter()
	return r.spoofBase + n
}

// nftInstalled reports whether the nft table exists.
func nftInstalled() (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, err
	}
	_, err = c.ListTableOfFamily(NftTable, nftables.TableFamilyIPv4)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	return err == nil, err
}
