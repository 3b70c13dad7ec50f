package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	mdns "github.com/miekg/dns"
)

// forward answers from the cache or from the upstream resolvers.
func (s *Server) forward(ctx context.Context, req *request) (*mdns.Msg, string) {
	r := req.msg
	key := cacheKey{name: req.name, qtype: req.q.Qtype, class: req.q.Qclass, edns: r.IsEdns0() != nil}
	if m, ok := s.cache.get(key, s.cfg.Now()); ok {
		s.metrics.cacheHits.Inc()
		m.Question = []mdns.Question{req.q}
		return m, resultCached
	}

	out := r.Copy()
	// A fresh random ID (crypto/rand through miekg's dns.Id) for every
	// upstream query; the client's ID is put back on the reply by handle.
	out.Id = mdns.Id()
	resp, err := s.exchangeAll(ctx, out)
	if err != nil {
		s.log.Debug("dns forward failed; answering SERVFAIL",
			slog.String("name", req.name), slog.String("type", mdns.TypeToString[req.q.Qtype]), slog.Any("error", err))
		return reply(r, mdns.RcodeServerFailure), resultServfail
	}
	s.cache.put(key, resp, s.cfg.Now())
	resp.Question = []mdns.Question{req.q}
	return resp, resultForwarded
}

// exchangeAll tries the upstreams in order, over UDP with a TCP retry when
// the answer is truncated. A SERVFAIL or REFUSED answer moves on to the next
// upstream but is returned if no upstream does better.
func (s *Server) exchangeAll(ctx context.Context, m *mdns.Msg) (*mdns.Msg, error) {
	var last *mdns.Msg
	var errs []error
	for _, up := range s.cfg.Upstreams {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		resp, err := s.exchange(ctx, "udp", m, up)
		if err == nil && resp.Truncated {
			resp, err = s.exchange(ctx, "tcp", m, up)
			if err != nil {
				s.metrics.forwardErrors.WithLabelValues("tcp").Inc()
			}
		} else if err != nil {
			s.metrics.forwardErrors.WithLabelValues("udp").Inc()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", up, err))
			continue
		}
		if resp.Rcode == mdns.RcodeServerFailure || resp.Rcode == mdns.RcodeRefused {
			last = resp
			continue
		}
		return resp, nil
	}
	if last != nil {
		return last, nil
	}
	return nil, errors.Join(errs...)
}

// exchangeUpstream is one query to one upstream. miekg/dns's Client dials a
// new socket for every Exchange, so each UDP query leaves from a fresh
// ephemeral port that the kernel picks at random, and the reply is matched
// on the connected socket and on the query ID.
func (s *Server) exchangeUpstream(ctx context.Context, network string, m *mdns.Msg, upstream string) (*mdns.Msg, error) {
	c := &mdns.Client{Net: network, Timeout: s.cfg.UpstreamTimeout}
	resp, _, err := c.ExchangeContext(ctx, m, upstream)
	if err != nil {
		return nil, err
	}
	return resp, nil
}
