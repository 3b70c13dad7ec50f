package injector

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// fileCerts serves a certificate and key from files that another party
// (cert-manager, through a mounted Secret) renews; it re-reads them when
// their modification time changes.
type fileCerts struct {
	certFile, keyFile string
	now               func() time.Time
	expiry            prometheus.Gauge
	log               *slog.Logger
	interval          time.Duration

	cur     atomic.Pointer[tls.Certificate]
	mu      sync.Mutex
	lastErr error
	mtime   time.Time
}

func newFileCerts(certFile, keyFile string, now func() time.Time, expiry prometheus.Gauge, log *slog.Logger) *fileCerts {
	f := &fileCerts{certFile: certFile, keyFile: keyFile, now: now, expiry: expiry, log: log, interval: 10 * time.Second}
	f.reload()
	return f
}

func (f *fileCerts) Certificate() *tls.Certificate { return f.cur.Load() }

func (f *fileCerts) Ready() error {
	c := f.cur.Load()
	if c == nil {
		f.mu.Lock()
		defer f.mu.Unlock()
		return fmt.Errorf("no serving certificate: %v", f.lastErr)
	}
	return validAt(c.Leaf, f.now())
}

func (f *fileCerts) Run(ctx context.Context) error {
	t := time.NewTicker(f.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			f.reload()
		}
	}
}

// reload reads the files if they changed; a bad pair keeps the last good
// certificate and is logged.
func (f *fileCerts) reload() {
	fi, err := os.Stat(f.certFile)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil && fi.ModTime().Equal(f.mtime) && f.cur.Load() != nil {
		return
	}
	c, err := tls.LoadX509KeyPair(f.certFile, f.keyFile)
	if err == nil && c.Leaf == nil {
		c.Leaf, err = x509.ParseCertificate(c.Certificate[0])
	}
	if err != nil {
		f.lastErr = err
		f.log.Error("cannot load the serving certificate; keeping the last good one", slog.String("cert", f.certFile), slog.Any("error", err))
		return
	}
	f.lastErr = nil
	if fi != nil {
		f.mtime = fi.ModTime()
	}
	f.cur.Store(&c)
	f.expiry.Set(float64(c.Leaf.NotAfter.Unix()))
	f.log.Info("serving certificate loaded", slog.String("cert", f.certFile), slog.Time("not_after", c.Leaf.NotAfter))
}

// validAt is nil when leaf is valid at now.
func validAt(leaf *x509.Certificate, now time.Time) error {
	switch {
	case leaf == nil:
		return fmt.Errorf("no serving certificate")
	case now.Before(leaf.NotBefore):
		return fmt.Errorf("serving certificate not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	case !now.Before(leaf.NotAfter):
		return fmt.Errorf("serving certificate expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}
