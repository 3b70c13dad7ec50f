package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// svid reads the pod's X.509-SVID with go-spiffe's stock Workload API
// client, from SPIFFE_ENDPOINT_SOCKET (or --socket).
func svid(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("svid", stderr)
	socket := fs.String("socket", "", "Workload API address, unix:///PATH (default: env "+workloadapi.SocketEnv+")")
	timeout := fs.Duration("timeout", 10*time.Second, "give up after this long")
	if _, err := parse(fs, args, 0, ""); err != nil {
		return err
	}
	var opts []workloadapi.ClientOption
	addr := *socket
	if addr == "" {
		addr = os.Getenv(workloadapi.SocketEnv)
		if addr == "" {
			return fmt.Errorf("%s is not set and no --socket given: this pod has no Workload API (is it injected?)", workloadapi.SocketEnv)
		}
	} else {
		opts = append(opts, workloadapi.WithAddr(addr))
	}
	if err := workloadapi.ValidateAddress(addr); err != nil {
		return fmt.Errorf("Workload API address %q: %w", addr, err)
	}
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("no Workload API socket at %s: %w", path, err)
		}
	}
	fctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	s, err := workloadapi.FetchX509SVID(fctx, opts...)
	if err != nil {
		return fmt.Errorf("fetching the X.509-SVID from %s: %w", addr, err)
	}
	leaf := s.Certificates[0]
	fmt.Fprintf(stdout, "spiffe_id: %s\nserial: %s\nnot_after: %s (in %s)\n",
		s.ID, leaf.SerialNumber.Text(16), leaf.NotAfter.UTC().Format(time.RFC3339), time.Until(leaf.NotAfter).Round(time.Second))
	return nil
}

// get prints the body of URL; a status other than 2xx is a failure.
func get(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("get", stderr)
	timeout := fs.Duration("timeout", 10*time.Second, "timeout of the request")
	rest, err := parse(fs, args, 1, "one URL")
	if err != nil {
		return err
	}
	u, err := parseHTTPURL(rest[0])
	if err != nil {
		return err
	}
	body, err := fetch(ctx, httpClient(*timeout), u.String())
	io.WriteString(stdout, body)
	return err
}

// fetch GETs url and returns the body; a status other than 2xx is an
// error naming it.
func fetch(ctx context.Context, c *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", url, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return string(b), fmt.Errorf("GET %s: reading the body: %w", url, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return string(b), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}

// load GETs URL in a loop for --duration and reports how many failed;
// any failure (or no success at all) is exit code 1.
func load(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("load", stderr)
	duration := fs.Duration("duration", time.Minute, "how long to send requests")
	interval := fs.Duration("interval", 200*time.Millisecond, "pause between the end of one request and the next")
	timeout := fs.Duration("timeout", 5*time.Second, "timeout of each request")
	expect := fs.String("expect", "", "a successful answer must contain this")
	rest, err := parse(fs, args, 1, "one URL")
	if err != nil {
		return err
	}
	u, err := parseHTTPURL(rest[0])
	if err != nil {
		return err
	}
	if *duration <= 0 || *interval < 0 || *timeout <= 0 {
		return fmt.Errorf("%w: --duration and --timeout must be positive, --interval not negative", errUsage)
	}
	c := httpClient(*timeout)
	start := time.Now()
	end := start.Add(*duration)
	var ok, failed int
	const keep = 20 // failures listed
	var failures []string
	for time.Now().Before(end) && ctx.Err() == nil {
		t := time.Now()
		body, err := fetch(ctx, c, u.String())
		if err == nil && !strings.Contains(body, *expect) {
			err = fmt.Errorf("answer %q does not contain %q", strings.TrimSpace(body), *expect)
		}
		if err != nil {
			failed++
			if len(failures) < keep {
				failures = append(failures, fmt.Sprintf("%s %v", t.UTC().Format("15:04:05.000"), err))
			}
		} else {
			ok++
		}
		select {
		case <-ctx.Done():
		case <-time.After(*interval):
		}
	}
	fmt.Fprintf(stdout, "requests=%d ok=%d failed=%d elapsed=%s\n", ok+failed, ok, failed, time.Since(start).Round(time.Millisecond))
	for _, f := range failures {
		fmt.Fprintf(stdout, "failed: %s\n", f)
	}
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("interrupted after %s", time.Since(start).Round(time.Millisecond))
	case failed > 0:
		return fmt.Errorf("%d of %d requests failed", failed, ok+failed)
	case ok == 0:
		return errors.New("no request was sent")
	}
	return nil
}

// dial connects to HOST:PORT and succeeds if the peer keeps the connection
// open for --hold (or sends something first). A sidecar that refuses a
// destination accepts the captured connection and resets it at once: that
// is a failure here, as a refused connect is.
func dial(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("dial", stderr)
	timeout := fs.Duration("timeout", 5*time.Second, "connect timeout")
	hold := fs.Duration("hold", time.Second, "how long the peer must keep the connection open")
	rest, err := parse(fs, args, 1, "HOST:PORT")
	if err != nil {
		return err
	}
	addr := rest[0]
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: %q: %v", errUsage, addr, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || host == "" {
		return fmt.Errorf("%w: %q: want HOST:PORT with a port from 1 to 65535", errUsage, addr)
	}
	if *hold <= 0 {
		return fmt.Errorf("%w: --hold must be positive", errUsage)
	}
	d := net.Dialer{Timeout: *timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", addr, err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(*hold))
	n, err := conn.Read(make([]byte, 512))
	var ne net.Error
	switch {
	case n > 0:
		fmt.Fprintf(stdout, "connected to %s (%s); the peer sent %d bytes first\n", addr, conn.RemoteAddr(), n)
		return nil
	case errors.As(err, &ne) && ne.Timeout():
		fmt.Fprintf(stdout, "connected to %s (%s); the peer kept the connection open for %s\n", addr, conn.RemoteAddr(), *hold)
		return nil
	case errors.Is(err, io.EOF):
		return fmt.Errorf("connected to %s, but the peer closed the connection at once", addr)
	case errors.Is(err, syscall.ECONNRESET):
		return fmt.Errorf("connected to %s, but the peer reset the connection at once: %w", addr, err)
	default:
		return fmt.Errorf("connected to %s, then: %w", addr, err)
	}
}

// sleep waits DURATION (default 1s), then exits 0.
func sleep(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlags("sleep", stderr)
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	d := time.Second
	switch fs.NArg() {
	case 0:
	case 1:
		v, err := time.ParseDuration(fs.Arg(0))
		if err != nil || v < 0 {
			return fmt.Errorf("%w: bad duration %q (want e.g. 5s, 1m)", errUsage, fs.Arg(0))
		}
		d = v
	default:
		return fmt.Errorf("%w: want at most one DURATION, got %q", errUsage, fs.Args())
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("interrupted")
	case <-t.C:
		return nil
	}
}
