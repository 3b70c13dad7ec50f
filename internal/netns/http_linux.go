//go:build linux

package netns

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"
)

// HTTP makes one HTTP request from inside ns (the connection is opened
// there, from src if it is valid) and returns the status code and body,
// failing the test if there is no answer within 5 seconds.
func (ns *NS) HTTP(t testing.TB, src netip.Addr, method, url string) (int, string) {
	t.Helper()
	dial := func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		d := net.Dialer{Timeout: 5 * time.Second}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
		err = ns.Do(func() (err error) { c, err = d.DialContext(ctx, network, addr); return err })
		return c, err
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("netns %s: %s %s: %v", ns.name, method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("netns %s: %s %s: body: %v", ns.name, method, url, err)
	}
	return resp.StatusCode, string(b)
}
