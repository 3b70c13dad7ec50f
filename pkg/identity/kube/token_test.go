package kube

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/pkg/identity"
)

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func jwt(header, payload string) string {
	return b64(header) + "." + b64(payload) + "." + b64("signature")
}

func TestParseToken(t *testing.T) {
	hdr := `{"alg":"RS256","kid":"k"}`
	tests := []struct {
		name    string
		token   string
		wantErr string
		exp     time.Time
	}{
		{name: "with exp", token: jwt(hdr, `{"sub":"x","exp":1700000000}`), exp: time.Unix(1700000000, 0)},
		{name: "fractional exp", token: jwt(hdr, `{"exp":1700000000.5}`), exp: time.Unix(1700000000, 5e8)},
		{name: "no exp", token: jwt(hdr, `{"sub":"x"}`)},
		{name: "string exp ignored", token: jwt(hdr, `{"exp":"tomorrow"}`)},
		{name: "negative exp ignored", token: jwt(hdr, `{"exp":-5}`)},
		{name: "huge exp ignored", token: jwt(hdr, `{"exp":1e300}`)},
		{name: "empty", token: "", wantErr: "empty token"},
		{name: "two parts", token: b64(hdr) + "." + b64("{}"), wantErr: "3 dot-separated parts"},
		{name: "four parts", token: jwt(hdr, "{}") + ".x", wantErr: "3 dot-separated parts"},
		{name: "empty signature", token: b64(hdr) + "." + b64("{}") + ".", wantErr: "empty signature"},
		{name: "padded base64", token: b64(hdr) + "." + base64.URLEncoding.EncodeToString([]byte("{}")) + ".c2ln", wantErr: "payload is not base64url"},
		{name: "std base64 alphabet", token: b64(hdr) + ".+/+/." + b64("s"), wantErr: "not base64url"},
		{name: "header not JSON", token: jwt("nope", "{}"), wantErr: "header: not a JSON object"},
		{name: "payload is array", token: jwt(hdr, "[1]"), wantErr: "payload: not a JSON object"},
		{name: "payload trailing junk", token: jwt(hdr, "{} x"), wantErr: "payload"},
		{name: "join token", token: "tjt_" + strings.Repeat("A", 43), wantErr: "3 dot-separated parts"},
		{name: "too big", token: jwt(hdr, `{"x":"`+strings.Repeat("a", MaxTokenSize)+`"}`), wantErr: "more than the limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseToken(tt.token)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				if !errors.Is(err, identity.ErrUnauthenticated) {
					t.Fatalf("err = %v, want it to wrap ErrUnauthenticated", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !c.Expiry.Equal(tt.exp) {
				t.Fatalf("expiry = %v, want %v", c.Expiry, tt.exp)
			}
		})
	}
}

func FuzzParseToken(f *testing.F) {
	f.Add(jwt(`{"alg":"RS256"}`, `{"exp":1700000000}`))
	f.Add(jwt(`{}`, `{"exp":1e300}`))
	f.Add(jwt(`{}`, `{"exp":null}`))
	f.Add("a.b.c")
	f.Add("..")
	f.Add("")
	f.Fuzz(func(t *testing.T, token string) {
		c, err := parseToken(token)
		if err != nil {
			if !errors.Is(err, identity.ErrUnauthenticated) {
				t.Fatalf("error %v does not wrap ErrUnauthenticated", err)
			}
			return
		}
		if len(token) > MaxTokenSize || strings.Count(token, ".") != 2 {
			t.Fatalf("accepted malformed token %q", token)
		}
		if !c.Expiry.IsZero() && (c.Expiry.Unix() <= 0 || c.Expiry.Unix() > maxNumericDate) {
			t.Fatalf("insane expiry %v accepted", c.Expiry)
		}
	})
}

func TestParseServiceAccount(t *testing.T) {
	tests := []struct {
		user   string
		ns, sa string
		ok     bool
	}{
		{"system:serviceaccount:default:web", "default", "web", true},
		{"system:serviceaccount:team-a:api.v2", "team-a", "api.v2", true},
		{"system:serviceaccount:default", "", "", false},
		{"system:serviceaccount:default:web:extra", "", "", false},
		{"system:serviceaccount::web", "", "", false},
		{"system:serviceaccount:Default:web", "", "", false},
		{"system:serviceaccount:default:../x", "", "", false},
		{"system:node:worker-1", "", "", false},
		{"alice", "", "", false},
		{"", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			ns, sa, err := parseServiceAccount(tt.user)
			if !tt.ok {
				if !errors.Is(err, identity.ErrUnauthenticated) {
					t.Fatalf("err = %v, want ErrUnauthenticated", err)
				}
				return
			}
			if err != nil || ns != tt.ns || sa != tt.sa {
				t.Fatalf("got %q %q %v, want %q %q", ns, sa, err, tt.ns, tt.sa)
			}
		})
	}
}
