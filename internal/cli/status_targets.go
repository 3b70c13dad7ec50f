package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/caadmin"
)

// Bodies larger than these are refused: they come from the mesh's own
// processes, but a status command should not read without a bound.
const (
	maxSidecarsBody = 16 << 20
	maxDenialsBody  = 1 << 20
	maxMetricsBody  = 8 << 20
)

// nodeBody is one entry of tether-discovery's GET /debug/sidecars
// (xds.NodeInfo).
type nodeBody struct {
	ID                   string    `json:"spiffe_id"`
	Peer                 string    `json:"peer"`
	ConnectedSince       time.Time `json:"connected_since"`
	ConnectionSVIDExpiry time.Time `json:"connection_svid_expiry"`
	Metadata             struct {
		AdminAddr  string    `json:"admin_addr"`
		SVIDExpiry time.Time `json:"svid_expiry"`
		Version    string    `json:"version"`
	} `json:"metadata"`
	MetadataError string `json:"metadata_error"`
}

// sidecarsBody is tether-discovery's GET /debug/sidecars.
type sidecarsBody struct {
	Sidecars []nodeBody `json:"sidecars"`
}

// denialsBody is a sidecar's GET /debug/denials.
type denialsBody struct {
	SpiffeID string `json:"spiffe_id"`
	Total    uint64 `json:"total"`
	Denials  []struct {
		Time        time.Time `json:"time"`
		Direction   string    `json:"direction"`
		Source      string    `json:"source"`
		Destination string    `json:"destination"`
		Rule        string    `json:"rule"`
		Reason      string    `json:"reason"`
	} `json:"denials"`
}

// decodeBody reads at most limit bytes of JSON from r into v.
func decodeBody(r io.Reader, limit int64, v any) error {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if int64(len(b)) > limit {
		return fmt.Errorf("answer larger than %d bytes", limit)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("not the expected JSON (is this a Tether admin port of this version?): %w", err)
	}
	return nil
}

// caFromStatus is the CA's Status RPC answer in the report.
func caFromStatus(source string, st *cav1.StatusResponse) *caStatus {
	c := &caStatus{Source: source, TrustDomain: st.GetTrustDomain(), BundleSequence: st.GetBundleSequence(),
		NextStep: st.GetNextStep(), NextStepAt: unix(st.GetNextStepAtUnix()), Generations: []generationStatus{},
		NextStepOverdue: st.GetNextStepOverdue(), NextStepManual: st.GetNextStepManual(), IntermediateRenewalOverdue: st.GetIntermediateRenewalOverdue()}
	for _, g := range st.GetGenerations() {
		c.Generations = append(c.Generations, generationStatus{
			ID: g.GetId(), State: g.GetState(), RootSHA256: g.GetRootFingerprint(), Upstream: g.GetUpstream(),
			RootExpires: unix(g.GetRootNotAfterUnix()), IntermediateExpires: unix(g.GetIntermediateNotAfterUnix()),
			RetireAfter: unix(g.GetRetireAfterUnix()),
		})
	}
	return c
}

func unix(s int64) time.Time {
	if s == 0 {
		return time.Time{}
	}
	return time.Unix(s, 0).UTC()
}

// directTargets reaches a standalone mesh: the CA's operator socket and
// plain HTTP to the admin ports.
type directTargets struct {
	opts statusOptions
}

var _ statusTargets = (*directTargets)(nil)

func (d *directTargets) describe() (string, string) { return "standalone", "" }

func (d *directTargets) ca(ctx context.Context) *caStatus {
	if d.opts.caSocket == "" {
		return nil
	}
	source := "operator socket " + d.opts.caSocket
	api, done, err := caadmin.Dial(d.opts.caSocket)
	if err != nil {
		return &caStatus{Source: source, Error: err.Error()}
	}
	defer done()
	ctx, cancel := context.WithTimeout(ctx, d.opts.timeout)
	defer cancel()
	st, err := api.Status(ctx, &cav1.StatusRequest{})
	if err != nil {
		return &caStatus{Source: source, Error: caadmin.RPCError("status", err).Error()}
	}
	return caFromStatus(source, st)
}

func (d *directTargets) discovery(ctx context.Context) []discoveryStatus {
	out := make([]discoveryStatus, len(d.opts.discoveryURLs))
	done := make(chan struct{})
	for i, u := range d.opts.discoveryURLs {
		go func() {
			defer func() { done <- struct{}{} }()
			out[i] = discoveryStatus{Source: u}
			var body sidecarsBody
			if err := httpGet(ctx, u+"/debug/sidecars", d.opts.timeout, maxSidecarsBody, &body); err != nil {
				out[i].Error = err.Error()
				return
			}
			out[i].nodes, out[i].Sidecars = body.Sidecars, len(body.Sidecars)
		}()
	}
	for range d.opts.discoveryURLs {
		<-done
	}
	return out
}

func (d *directTargets) denials(ctx context.Context, sc *sidecarStatus) (*denialsBody, error) {
	var body denialsBody
	if err := httpGet(ctx, "http://"+sc.AdminAddr+"/debug/denials", d.opts.sidecarTimeout, maxDenialsBody, &body); err != nil {
		return nil, err
	}
	return &body, nil
}

// statusHTTP is the client of the admin ports: no proxy from the
// environment (the addresses are the mesh's own), no redirects.
var statusHTTP = &http.Client{
	Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1, DisableKeepAlives: true},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return errors.New("admin ports do not redirect")
	},
}

// httpGet fetches url within timeout and decodes its JSON into v.
func httpGet(ctx context.Context, url string, timeout time.Duration, limit int64, v any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := statusHTTP.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("unreachable: no answer from %s within %s", req.URL.Host, timeout)
		}
		return fmt.Errorf("unreachable: %w", errors.Unwrap(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET %s: %s: %s", req.URL.Path, resp.Status, clean(string(msg)))
	}
	return decodeBody(resp.Body, limit, v)
}
