// Package mesh holds Tether's end-to-end guarantees, proven on a loopback
// mesh of the real binaries (tether-ca, tether-discovery, tether-sidecar and
// the tether CLI), each a separate process in its own process group, with
// no root. The apps behind the sidecars and the load generators are in the
// test process.
//
//   - TestRotationUnderLoad: a root rotation (prepare → activate → retire,
//     on the safe schedule, no --force) under 200 requests/s through two
//     sidecar pairs, new and kept connections, plus bursts that force new
//     handshakes in every phase, loses no request; every SVID, served chain
//     and bundle ends on the new root only.
//   - TestCAOutage: with tether-ca down past a renewal, traffic flows on
//     cached SVIDs and sidecars report degraded (tether_sidecar_ca_reachable
//     0, /healthz/ready 200 "ready, degraded: ..."); they recover without a
//     restart; past SVID expiry new connections fail closed, never in
//     plaintext; they recover again when the CA returns.
//   - TestDiscoveryOutage: with tether-discovery killed, sidecars keep
//     enforcing their last configuration (allowed calls work, denied ones
//     are refused at both ends); a policy change made meanwhile applies
//     once it returns, not before.
//   - TestCACrashDuringRotation: tether-ca killed with SIGKILL in the middle
//     of rotation steps (at the temporary file of its state or bundle, or
//     at random) leaves a consistent store; the restarted CA shows the same
//     journal, a lost step completes, an acknowledged one is never lost.
//   - TestLoadNoLeaks: 200 concurrent connections, allowed and denied, for
//     20 seconds by default (TETHER_MESH_LOAD_DURATION=1m runs the full
//     minute the guarantee names): no failed request, no refused one
//     answered; goroutines and open fds of every sidecar back to their
//     level after a warm-up, then, once pooled tunnels expire, to idle;
//     RSS flat during the load (tolerances in the test's comment).
//   - TestPooledTunnelAcrossClientSVIDExpiry: pooled tunnels stop being
//     reused before the SVID the client presented in them expires, so the
//     server never refuses a stream on them.
//   - Federation (two meshes, a.example and b.example, each CA following
//     the other's bundle endpoint): TestTwoMeshesFederatedBundles (the
//     foreign roots reach every sidecar's Workload API, a prepared root
//     within seconds), TestCrossDomainCalls (remote services called with
//     the caller's own SVID, admitted by spiffeID and trustDomain sources,
//     the caller's real ID in the destination's access log; a caller the
//     policy does not name and one of an unfederated domain refused),
//     TestCrossDomainRotation (a root rotation in a.example under traffic
//     in both directions), and, on two real kube-apiservers,
//     TestTwoClustersFederate and TestTwoClustersCrossDomainCall
//     (TrustDomainFederation, AccessPolicy and RemoteService objects; the
//     latter needs root for the callers' network namespace).
//
// The binaries are built once per run with `go build` (honouring GOFLAGS,
// which `make test` sets to -tags=grpcnotrace). Most of the time goes to
// real timers (tether-ca's shortest SVID lifetime is one minute), so all
// tests but the load phase of TestLoadNoLeaks run in parallel, and
// -parallel is raised to 8 unless given: the package takes about 2.5
// minutes on two cores (3 with TETHER_MESH_LOAD_DURATION=1m). The tests
// are skipped with -short. TETHER_MESH_KEEP_LOGS=1 keeps the processes'
// directories (logs, access logs, CA store) of a failed test;
// TETHER_MESH_CRASH_ITERATIONS sets the number of kills (default 9).
package mesh
