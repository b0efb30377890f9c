// Package e2e holds Wiremesh's end-to-end tests: the real coordinator,
// relayd and meshnode binaries, built once per run, started inside network
// namespaces of the lab (package lab) with real TUN devices, real
// wireguard-go and kernel NAT between them. The tests carry the lab build
// tag and need root; `make test` runs them.
package e2e
