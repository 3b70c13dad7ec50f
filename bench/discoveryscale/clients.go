package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/encoding/protowire"
)

// maxRecv is the clients' receive limit: a CDS response for 10,000
// services is a few MB, above gRPC's default of 4 MiB.
const maxRecv = 256 << 20

// client is one simulated sidecar: an ADS stream (state of the world) on
// its own mTLS connection, as the SPIFFE ID of its SVID. It subscribes to
// clusters, listeners and its name table, then to the endpoints of every
// cluster it is sent, and ACKs every response. With delta it speaks
// incremental ADS instead: every type wildcard (the name table by name),
// each response ACKed.
type client struct {
	j    int
	id   spiffeid.ID
	conn *grpc.ClientConn
	node *corev3.Node

	sendMu  sync.Mutex
	stream  discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	dstream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient

	mu       sync.Mutex
	versions map[string]string // last version received, by type
	edsNames []string          // clusters last received, subscribed to on EDS
	edsAck   *discoveryv3.DiscoveryResponse
	watch    *watch // the change being waited for, if any
	haveAll  chan struct{}
	err      error
}

// watch is what one client waits for in one change.
type watch struct {
	typ     string
	base    string // the type's version before the change
	markers [][]byte
	at      int64 // Unix ns of the matching response; 0 until then
	done    func()
}

// fleet is every client, and the counters of what they received.
type fleet struct {
	clients []*client
	resps   [4]atomic.Int64 // responses by type (index in allTypes)
	bytes   [4]atomic.Int64 // resource bytes by type
}

func typeIndex(t string) int {
	for i, a := range allTypes {
		if a == t {
			return i
		}
	}
	return -1
}

// dial connects client j as id with svid to addr, verifying the server as
// serverID.
func dial(ctx context.Context, j int, addr string, svid *x509svid.SVID, bundle *x509bundle.Bundle, serverID spiffeid.ID, delta bool) (*client, error) {
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(serverID)))),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecv)))
	if err != nil {
		return nil, err
	}
	c := &client{j: j, id: svid.ID, conn: conn, node: &corev3.Node{Id: svid.ID.String()},
		versions: map[string]string{}, haveAll: make(chan struct{})}
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	if delta {
		c.dstream, err = ads.DeltaAggregatedResources(ctx)
	} else {
		c.stream, err = ads.StreamAggregatedResources(ctx)
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// sendDelta sends an incremental request (an ACK when nonce is set).
func (c *client) sendDelta(typ string, subscribe []string, nonce string) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	return c.dstream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: c.node, TypeUrl: typ, ResourceNamesSubscribe: subscribe, ResponseNonce: nonce})
}

// runDelta is run for an incremental stream: it counts and ACKs every
// response.
func (c *client) runDelta(f *fleet) {
	closed := false
	for {
		r, err := c.dstream.Recv()
		now := time.Now().UnixNano()
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		if ti := typeIndex(r.TypeUrl); ti >= 0 {
			f.resps[ti].Add(1)
			var n int64
			for _, res := range r.Resources {
				n += int64(len(res.GetResource().GetValue()))
			}
			f.bytes[ti].Add(n)
		}
		c.mu.Lock()
		c.versions[r.TypeUrl] = r.SystemVersionInfo
		if w := c.watch; w != nil && w.at == 0 && r.TypeUrl == w.typ && r.SystemVersionInfo != w.base && hasMarkerDelta(r, w.markers) {
			w.at = now
			w.done()
		}
		all := !closed && len(c.versions) == len(allTypes)
		c.mu.Unlock()
		if all {
			closed = true
			close(c.haveAll)
		}
		if err := c.sendDelta(r.TypeUrl, nil, r.Nonce); err != nil {
			return
		}
	}
}

func hasMarkerDelta(r *discoveryv3.DeltaDiscoveryResponse, markers [][]byte) bool {
	if len(markers) == 0 {
		return true
	}
	for _, res := range r.Resources {
		for _, m := range markers {
			if bytes.Contains(res.GetResource().GetValue(), m) {
				return true
			}
		}
	}
	return false
}

func (c *client) send(typ string, names []string, ack *discoveryv3.DiscoveryResponse) error {
	req := &discoveryv3.DiscoveryRequest{Node: c.node, TypeUrl: typ, ResourceNames: names}
	if ack != nil {
		req.VersionInfo, req.ResponseNonce = ack.GetVersionInfo(), ack.GetNonce()
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	return c.stream.Send(req)
}

// subscribe sends the first requests; run receives.
func (c *client) subscribe() error {
	if c.dstream != nil {
		for _, t := range []string{typeCDS, typeEDS, typeLDS} {
			if err := c.sendDelta(t, nil, ""); err != nil {
				return err
			}
		}
		return c.sendDelta(typeECDS, nil, "") // wildcard: the name-table entries
	}
	for _, t := range []string{typeCDS, typeLDS} {
		if err := c.send(t, nil, nil); err != nil {
			return err
		}
	}
	return c.send(typeECDS, nil, nil)
}

// run receives until the stream ends, ACKing each response and
// subscribing to the endpoints of the clusters it is sent.
func (c *client) run(f *fleet) {
	closed := false
	for {
		r, err := c.stream.Recv()
		now := time.Now().UnixNano()
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		ti := typeIndex(r.TypeUrl)
		if ti >= 0 {
			f.resps[ti].Add(1)
			var n int64
			for _, a := range r.Resources {
				n += int64(len(a.Value))
			}
			f.bytes[ti].Add(n)
		}
		c.mu.Lock()
		c.versions[r.TypeUrl] = r.VersionInfo
		if w := c.watch; w != nil && w.at == 0 && r.TypeUrl == w.typ && r.VersionInfo != w.base && hasMarker(r, w.markers) {
			w.at = now
			w.done()
		}
		var names, edsNames []string // CDS, LDS and ECDS stay wildcard
		var edsAck *discoveryv3.DiscoveryResponse
		switch r.TypeUrl {
		case typeCDS:
			c.edsNames = clusterNames(r)
			edsNames, edsAck = c.edsNames, c.edsAck
		case typeEDS:
			c.edsAck = r
			names = c.edsNames
		case typeECDS:
			names = nil // wildcard
		}
		all := !closed && len(c.versions) == len(allTypes)
		c.mu.Unlock()
		if all {
			closed = true
			close(c.haveAll)
		}
		// ACK, then (for clusters) ask for their endpoints.
		if err := c.send(r.TypeUrl, names, r); err != nil {
			return
		}
		if r.TypeUrl == typeCDS {
			if err := c.send(typeEDS, edsNames, edsAck); err != nil {
				return
			}
		}
	}
}

// clusterNames reads each Cluster's name (field 1) from the wire, without
// unmarshaling the rest.
func clusterNames(r *discoveryv3.DiscoveryResponse) []string {
	names := make([]string, 0, len(r.Resources))
	for _, a := range r.Resources {
		b := a.Value
		for len(b) > 0 {
			num, typ, n := protowire.ConsumeTag(b)
			if n < 0 {
				break
			}
			b = b[n:]
			if num == 1 && typ == protowire.BytesType {
				v, _ := protowire.ConsumeBytes(b)
				names = append(names, string(v))
				break
			}
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				break
			}
			b = b[n:]
		}
	}
	return names
}

func hasMarker(r *discoveryv3.DiscoveryResponse, markers [][]byte) bool {
	if len(markers) == 0 {
		return true
	}
	for _, a := range r.Resources {
		for _, m := range markers {
			if bytes.Contains(a.Value, m) {
				return true
			}
		}
	}
	return false
}

// connect dials and subscribes every client, at most par handshakes at a
// time, and waits until each has received every type.
func connect(ctx context.Context, addr string, svids []*x509svid.SVID, bundle *x509bundle.Bundle, serverID spiffeid.ID, par int, timeout time.Duration, delta bool) (*fleet, error) {
	f := &fleet{clients: make([]*client, len(svids))}
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var firstErr error
	for j, s := range svids {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := dial(ctx, j, addr, s, bundle, serverID, delta)
			if err == nil {
				err = c.subscribe()
			}
			if err != nil {
				errMu.Lock()
				firstErr = cmpErr(firstErr, fmt.Errorf("client %d: %w", j, err))
				errMu.Unlock()
				return
			}
			f.clients[j] = c
			if delta {
				go c.runDelta(f)
			} else {
				go c.run(f)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		f.close()
		return nil, firstErr
	}
	deadline := time.After(timeout)
	for _, c := range f.clients {
		select {
		case <-c.haveAll:
		case <-deadline:
			f.close()
			return nil, fmt.Errorf("client %d has not received every type within %s", c.j, timeout)
		}
	}
	return f, nil
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// arm sets what each expected client waits for; wait returns when all
// have it or timeout passes.
func (f *fleet) arm(ch change) (wait func(timeout time.Duration) ([]int64, error)) {
	var wg sync.WaitGroup
	var markers [][]byte
	for _, m := range ch.Marker {
		markers = append(markers, []byte(m))
	}
	ws := make([]*watch, len(ch.Expect))
	for k, j := range ch.Expect {
		c := f.clients[j]
		wg.Add(1)
		var once sync.Once
		c.mu.Lock()
		ws[k] = &watch{typ: ch.Type, base: c.versions[ch.Type], markers: markers, done: func() { once.Do(wg.Done) }}
		c.watch = ws[k]
		c.mu.Unlock()
	}
	return func(timeout time.Duration) ([]int64, error) {
		ok := make(chan struct{})
		go func() { wg.Wait(); close(ok) }()
		var err error
		select {
		case <-ok:
		case <-time.After(timeout):
			err = errors.New("timed out")
		}
		at := make([]int64, len(ws))
		for k, j := range ch.Expect {
			c := f.clients[j]
			c.mu.Lock()
			at[k] = ws[k].at
			c.watch = nil
			if ws[k].at == 0 {
				err = fmt.Errorf("client %d (%s) did not receive %s: stream error %v, versions %v", j, c.id, shortType(ch.Type), c.err, c.versions)
			}
			c.mu.Unlock()
		}
		return at, err
	}
}

// counts returns the responses and bytes received so far, by type.
func (f *fleet) counts() (resps, bytes [4]int64) {
	for i := range allTypes {
		resps[i], bytes[i] = f.resps[i].Load(), f.bytes[i].Load()
	}
	return resps, bytes
}

func (f *fleet) close() {
	for _, c := range f.clients {
		if c != nil {
			c.conn.Close()
		}
	}
}
