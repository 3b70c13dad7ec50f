package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/tether-mesh/tether/internal/cliflag"
)

// AppHelp is the long help of the hidden `tether demo app`: the sample
// service tether demo runs behind each sidecar.
const AppHelp = `A sample service of tether demo: a small HTTP server. GET / answers NAME
when it calls nothing; otherwise it calls the first --call and answers
"NAME → " and that answer (web → api → db). GET /call/SERVICE calls that
one --call. ADDR of a --call is an outbound listener of the app's sidecar,
so every call goes over the mesh; a call that fails answers 502 with the
error.`

// App is the hidden `tether demo app` with its log output.
type App struct {
	// Stderr gets the app's log.
	Stderr io.Writer

	name, listen string
	calls        []demoCall
}

// AddFlags registers the flags of `tether demo app` on fs; Run reads
// them. --name and --listen are required.
func (a *App) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&a.name, "name", "", "the service's name")
	fs.StringVar(&a.listen, "listen", "", "address to serve on, host:port")
	fs.Func("call", "SERVICE=ADDR: a service this app calls, through its sidecar's outbound listener ADDR (repeatable; GET / calls the first)", func(v string) error {
		n, addr, ok := strings.Cut(v, "=")
		if !ok || n == "" || addr == "" {
			return fmt.Errorf("want SERVICE=ADDR, got %q", v)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%q: %v", v, err)
		}
		a.calls = append(a.calls, demoCall{name: n, target: addr})
		return nil
	})
}

// Run serves the app until ctx ends.
func (a *App) Run(ctx context.Context) error {
	if a.name == "" || a.listen == "" {
		return fmt.Errorf("%w: --name and --listen are required", cliflag.ErrUsage)
	}
	log := slog.New(slog.NewTextHandler(a.Stderr, nil)).With(slog.String("app", a.name))
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	call := func(w http.ResponseWriter, r *http.Request, c demoCall) {
		body, err := demoGet(r.Context(), client, "http://"+c.target+"/")
		if err != nil {
			log.Warn("call failed", slog.String("to", c.name), slog.String("via", c.target), slog.Any("error", err))
			http.Error(w, fmt.Sprintf("%s → %s: %v", a.name, c.name, err), http.StatusBadGateway)
			return
		}
		fmt.Fprintf(w, "%s → %s", a.name, body)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		if len(a.calls) == 0 {
			fmt.Fprint(w, a.name)
			return
		}
		call(w, r, a.calls[0])
	})
	mux.HandleFunc("GET /call/{service}", func(w http.ResponseWriter, r *http.Request) {
		for _, c := range a.calls {
			if c.name == r.PathValue("service") {
				call(w, r, c)
				return
			}
		}
		http.Error(w, fmt.Sprintf("%s does not call %q", a.name, r.PathValue("service")), http.StatusNotFound)
	})
	l, err := net.Listen("tcp", a.listen)
	if err != nil {
		return fmt.Errorf("demo app %s: %w", a.name, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	log.Info("serving", slog.String("listen", l.Addr().String()))
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	return nil
}

// demoGet gets target and returns the body of a 200 answer.
func demoGet(ctx context.Context, c *http.Client, target string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		// The network error alone, without the URL and the transport's
		// internals around it.
		if oe := (*net.OpError)(nil); errors.As(err, &oe) {
			return "", oe.Err
		}
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			err = ue.Err
		}
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64*1024))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return string(b), nil
}
