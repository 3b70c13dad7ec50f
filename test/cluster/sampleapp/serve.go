package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// MarkerHeader carries the marker from one app of the chain to the next.
const MarkerHeader = "X-Tether-Marker"

// maxBody bounds what the apps read of a request or an answer.
const maxBody = 1 << 20

// newFlags returns a flag set for a subcommand that reports to stderr.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("tether-sample "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parse parses args and checks that exactly nargs positional arguments
// remain, returning them.
func parse(fs *flag.FlagSet, args []string, nargs int, what string) ([]string, error) {
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() != nargs {
		if nargs == 0 {
			return nil, fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
		}
		return nil, fmt.Errorf("%w: want %s, got %d arguments %q", errUsage, what, fs.NArg(), fs.Args())
	}
	return fs.Args(), nil
}

// parseHTTPURL accepts an absolute http or https URL with a host.
func parseHTTPURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("%w: bad URL %q: %v", errUsage, s, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%w: bad URL %q: want http://HOST[:PORT]/PATH or https://...", errUsage, s)
	}
	return u, nil
}

// httpClient makes a new connection for every request, so that every call
// of the story is a new connection (a new stream through the sidecars).
func httpClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout:   timeout,
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// app is one link of the chain web → api → db.
type app struct {
	name, marker string
	next         *url.URL // nil: the end of the chain
	client       *http.Client
	log          *log.Logger
}

// serve runs the HTTP server until ctx ends.
func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("serve", stderr)
	name := fs.String("name", "", "this app's name, in every answer (required)")
	listen := fs.String("listen", ":8080", "address to listen on")
	next := fs.String("next", "", "URL of the next app of the chain, called for every GET /")
	marker := fs.String("marker", os.Getenv("MARKER"), "marker string sent in every request and answer (env MARKER; required)")
	timeout := fs.Duration("timeout", 10*time.Second, "timeout of the call to --next")
	if _, err := parse(fs, args, 0, ""); err != nil {
		return err
	}
	if *name == "" {
		return fmt.Errorf("%w: --name is required", errUsage)
	}
	if *marker == "" {
		return fmt.Errorf("%w: --marker (or env MARKER) is required", errUsage)
	}
	a := &app{name: *name, marker: *marker, client: httpClient(*timeout), log: log.New(stdout, "", log.LstdFlags|log.Lmicroseconds)}
	if *next != "" {
		u, err := parseHTTPURL(*next)
		if err != nil {
			return fmt.Errorf("--next: %w", err)
		}
		a.next = u
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", *listen, err)
	}
	return a.run(ctx, l)
}

// run serves on l until ctx ends, then shuts down within 5s.
func (a *app) run(ctx context.Context, l net.Listener) error {
	srv := &http.Server{Handler: a.handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	next := "none"
	if a.next != nil {
		next = a.next.String()
	}
	a.log.Printf("%s listening on %s, next %s", a.name, l.Addr(), next)
	select {
	case err := <-errc:
		return fmt.Errorf("serving on %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutting down: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving on %s: %w", l.Addr(), err)
	}
	return nil
}

func (a *app) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/{$}", a.root)
	return a.logged(mux)
}

// root answers "NAME: marker=M request-marker=R", followed by the next
// app's answer indented, or 502 if the next app cannot be reached.
func (a *app) root(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		http.Error(w, "GET or POST only", http.StatusMethodNotAllowed)
		return
	}
	io.Copy(io.Discard, io.LimitReader(r.Body, maxBody))
	got := r.Header.Get(MarkerHeader)
	if got == "" {
		got = "-"
	}
	line := fmt.Sprintf("%s: marker=%s request-marker=%s\n", a.name, a.marker, got)
	if a.next == nil {
		io.WriteString(w, line)
		return
	}
	answer, err := a.callNext(r.Context())
	if err != nil {
		a.log.Printf("calling %s: %v", a.next, err)
		http.Error(w, fmt.Sprintf("%s: calling %s: %v", a.name, a.next, err), http.StatusBadGateway)
		return
	}
	io.WriteString(w, line+indent(answer))
}

// callNext POSTs to the next app with the marker in a header and the body.
func (a *app) callNext(ctx context.Context) (string, error) {
	body := fmt.Sprintf("request from %s marker=%s\n", a.name, a.marker)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.next.String(), strings.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set(MarkerHeader, a.marker)
	resp, err := a.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return "", fmt.Errorf("reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return string(b), nil
}

func indent(s string) string {
	lines := strings.SplitAfter(s, "\n")
	var b strings.Builder
	for _, l := range lines {
		if l != "" {
			b.WriteString("  " + l)
		}
	}
	return b.String()
}

// statusWriter remembers the status code for the request log.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// logged logs one line per request: method, path, caller, status, time.
func (a *app) logged(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		a.log.Printf("%s %s from %s: %d in %s", r.Method, r.URL.Path, r.RemoteAddr, sw.code, time.Since(start).Round(time.Microsecond))
	})
}
