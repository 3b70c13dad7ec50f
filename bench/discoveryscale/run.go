package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/tether-mesh/tether/internal/procstat"
	"github.com/tether-mesh/tether/pkg/identity"
)

var serverID = spiffeid.RequireFromPath(trustDomain, "/discovery")

// testCA is a tether CA on a disk store in a temporary directory.
type testCA struct {
	dir string
	ca  *identity.CA
}

func newTestCA(ctx context.Context) (*testCA, error) {
	dir, err := os.MkdirTemp("", "discoveryscale-")
	if err != nil {
		return nil, err
	}
	store, err := identity.NewDiskStore(filepath.Join(dir, "ca"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	ca, err := identity.NewCA(ctx, identity.Config{TrustDomain: trustDomain, Store: store})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &testCA{dir: dir, ca: ca}, nil
}

func (t *testCA) close() { os.RemoveAll(t.dir) }

func (t *testCA) bundle() *x509bundle.Bundle { return t.ca.Bundle().Bundle }

// svid issues an SVID for id with a fresh P-256 key.
func (t *testCA) svid(id spiffeid.ID) (*x509svid.SVID, error) {
	key, err := identity.NewKey()
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, err
	}
	iss, err := t.ca.Sign(id, csr)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", id, err)
	}
	s := &x509svid.SVID{ID: id, PrivateKey: key}
	for _, der := range iss.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		s.Certificates = append(s.Certificates, c)
	}
	return s, nil
}

// writeServerFiles writes the server's SVID and the bundle as PEM files.
func (t *testCA) writeServerFiles() (cert, key, bundle string, err error) {
	s, err := t.svid(serverID)
	if err != nil {
		return "", "", "", err
	}
	certPEM, keyPEM, err := s.Marshal()
	if err != nil {
		return "", "", "", err
	}
	cert, key, bundle = filepath.Join(t.dir, "svid.pem"), filepath.Join(t.dir, "key.pem"), filepath.Join(t.dir, "bundle.pem")
	if err := os.WriteFile(cert, certPEM, 0o600); err != nil {
		return "", "", "", err
	}
	if err := os.WriteFile(key, keyPEM, 0o600); err != nil {
		return "", "", "", err
	}
	var b []byte
	for _, c := range t.bundle().X509Authorities() {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return cert, key, bundle, os.WriteFile(bundle, b, 0o600)
}

// server is the running server child.
type server struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Scanner
	ready ready
}

func startServer(sc Scale, cfg Config, cert, key, bundle string, profile bool) (*server, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{"serve",
		"-services", strconv.Itoa(sc.Services), "-namespaces", strconv.Itoa(sc.Namespaces),
		"-endpoints-per", strconv.Itoa(sc.EndpointsPer), "-policies", strconv.Itoa(sc.Policies),
		"-clients", strconv.Itoa(sc.Clients), "-cert", cert, "-key", key, "-bundle", bundle,
		"-build-rounds", strconv.Itoa(cfg.BuildRounds), "-build-nodes", strconv.Itoa(cfg.BuildNodes)}
	if profile && cfg.CPUProfile != "" {
		args = append(args, "-cpuprofile", cfg.CPUProfile)
	}
	if profile && cfg.MemProfile != "" {
		args = append(args, "-memprofile", cfg.MemProfile)
	}
	cmd := exec.Command(self, args...)
	cmd.Stderr = os.Stderr
	if cfg.ServerMemLimit != "" {
		cmd.Env = append(os.Environ(), "GOMEMLIMIT="+cfg.ServerMemLimit)
	}
	procstat.DieWithParent(cmd)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	s.out.Buffer(make([]byte, 1<<16), 1<<24)
	if err := s.read(&s.ready); err != nil {
		s.stop()
		return nil, fmt.Errorf("server child: %w", err)
	}
	return s, nil
}

func (s *server) pid() int { return s.cmd.Process.Pid }

func (s *server) read(v any) error {
	if !s.out.Scan() {
		if err := s.out.Err(); err != nil {
			return err
		}
		return io.ErrUnexpectedEOF
	}
	return json.Unmarshal(s.out.Bytes(), v)
}

func (s *server) call(cmd string, v any) error {
	if _, err := io.WriteString(s.in, cmd+"\n"); err != nil {
		return err
	}
	return s.read(v)
}

// stop asks the child to quit, and kills it if it does not within 10s.
func (s *server) stop() {
	io.WriteString(s.in, "quit\n")
	s.in.Close()
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
}

// settle waits until the server has used less than one clock tick of CPU
// in each of two consecutive 100 ms intervals, and returns its CPU time
// then and when it became quiet (or limit passed).
func settle(pid int, limit time.Duration) (time.Duration, time.Time) {
	deadline := time.Now().Add(limit)
	last, _ := procstat.CPU(pid)
	quiet := 0
	lastBusy := time.Now()
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		cur, err := procstat.CPU(pid)
		if err != nil {
			return last, lastBusy
		}
		if cur-last < 10*time.Millisecond {
			quiet++
			if quiet == 2 {
				return cur, lastBusy
			}
		} else {
			quiet = 0
			lastBusy = time.Now()
		}
		last = cur
	}
	return last, lastBusy
}
