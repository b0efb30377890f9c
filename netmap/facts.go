package netmap

import "net/netip"

// MeshPrefix is the range mesh addresses come from: the CGNAT range of RFC
// 6598. The coordinator allocates node addresses in it; nodes route it
// into their tunnel and never offer addresses in it as direct-path
// candidates.
var MeshPrefix = netip.MustParsePrefix("100.64.0.0/10")
