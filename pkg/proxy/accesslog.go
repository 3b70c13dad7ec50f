package proxy

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"time"
)

// AccessLog writes one JSON line per connection, for the audit trail.
// Denials and audit denials are always written; allowed connections at
// SampleRate (0..1).
type AccessLog struct {
	log        *slog.Logger
	sampleRate float64
}

// NewAccessLog writes JSON lines to w. sampleRate is the fraction of
// allowed connections logged (1: all).
func NewAccessLog(w io.Writer, sampleRate float64) *AccessLog {
	return &AccessLog{log: slog.New(slog.NewJSONHandler(w, nil)), sampleRate: sampleRate}
}

// Entry is one connection's record.
type Entry struct {
	Direction string
	SourceID  string
	DestID    string
	Source    string
	Dest      string
	// Decision is allow, deny, error, or audit-deny: allowed, while a
	// policy or default in audit mode would deny.
	Decision string
	Reason   string
	// Rule is the policy rule that decided, when one did; for audit-deny,
	// the would-be rule that would deny (Reason names the one that allowed).
	Rule string
	// Target is the mesh service port an outbound connection was for
	// ("namespace/name:port") when the route named one, else its
	// destination address; Port is the app port an inbound stream was
	// for. Neither is logged: they are for Config.Observe.
	Target string
	Port   uint16
	// BytesSent went to the peer; BytesReceived came from it.
	BytesSent, BytesReceived int64
	Start                    time.Time
	Duration                 time.Duration
}

// Record writes e if it is a denial or sampled.
func (a *AccessLog) Record(e *Entry) {
	if a == nil {
		return
	}
	if e.Decision == "allow" && a.sampleRate < 1 && rand.Float64() >= a.sampleRate {
		return
	}
	a.log.LogAttrs(context.Background(), slog.LevelInfo, "connection",
		slog.Time("start", e.Start),
		slog.String("direction", e.Direction),
		slog.String("source_id", e.SourceID),
		slog.String("destination_id", e.DestID),
		slog.String("source", e.Source),
		slog.String("destination", e.Dest),
		slog.String("decision", e.Decision),
		slog.String("reason", e.Reason),
		slog.String("rule", e.Rule),
		slog.Int64("bytes_sent", e.BytesSent),
		slog.Int64("bytes_received", e.BytesReceived),
		slog.Float64("duration_ms", float64(e.Duration.Microseconds())/1000),
	)
}
