package cni

import (
	"context"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// TestGetPodAnswers: every kind of answer the API server can give the
// plugin's get of a pod becomes a CNI error of one line (the runtime shows
// it in the pod's FailedCreatePodSandBox event) that says what failed and
// what happens next; a refused token names the node agent and the node.
func TestGetPodAnswers(t *testing.T) {
	var status int
	var body string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer the-token" || r.URL.Path != "/api/v1/namespaces/shop/pods/web" {
			http.Error(w, "unexpected request "+r.URL.Path, http.StatusTeapot)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write([]byte(body))
	}))
	defer srv.Close()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	kcb, err := Kubeconfig(srv.URL, ca, "the-token")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, kcb, 0o600); err != nil {
		t.Fatal(err)
	}
	kc, err := loadKubeconfig(path)
	if err != nil {
		t.Fatal(err)
	}
	kc.node = "node-7"
	status401 := `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}`
	for _, c := range []struct {
		name   string
		status int
		body   string
		code   uint
		want   []string
	}{
		{"token refused", 401, status401, types.ErrTryAgainLater, []string{
			"tether-cni: cannot read pod shop/web: the API server refused the node agent's token (HTTP 401)",
			"tether-cni-node on node node-7 is not running or has not renewed its token",
			"the pod waits and starts once tether-cni-node runs on the node again", "HTTP 401: Unauthorized"}},
		{"RBAC missing", 403, `{"kind":"Status","message":"pods \"web\" is forbidden: User \"system:serviceaccount:kube-system:tether-cni-node\" cannot get resource \"pods\"\nin API group \"\""}`,
			types.ErrInvalidNetworkConfig, []string{"(HTTP 403): its RBAC (get pods, ClusterRole tether-cni-node) is missing",
				"run `tether-cni-node uninstall` on node node-7", `cannot get resource "pods" in API group`}},
		{"not found", 404, `{"kind":"Status","message":"pods \"web\" not found"}`, types.ErrTryAgainLater, []string{"pod shop/web not found at the API server"}},
		{"throttled", 429, "slow down", types.ErrTryAgainLater, []string{"answered HTTP 429; the kubelet retries", "HTTP 429: slow down"}},
		{"server error", 503, "<html>\n<b>down</b>\n</html>", types.ErrTryAgainLater, []string{"answered HTTP 503; the kubelet retries", "<html> <b>down</b> </html>"}},
		{"unexpected 4xx", 400, "bad", types.ErrInternal, []string{"answered HTTP 400, which tether-cni does not expect"}},
		{"unexpected 3xx", 304, "", types.ErrInternal, []string{"answered HTTP 304"}},
		{"not a pod", 200, "[1, 2", types.ErrDecodingFailure, []string{"pod shop/web: cannot decode the API server's answer"}},
		{"huge message", 500, strings.Repeat("x", 5000), types.ErrTryAgainLater, []string{strings.Repeat("x", 300) + "..."}},
	} {
		t.Run(c.name, func(t *testing.T) {
			status, body = c.status, c.body
			_, err := kc.getPod(context.Background(), "shop", "web")
			var cerr *types.Error
			if !errors.As(err, &cerr) || cerr.Code != c.code {
				t.Fatalf("getPod: %v, want CNI error code %d", err, c.code)
			}
			msg := cerr.Error()
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			if strings.Contains(msg, "\n") || len(msg) > 700 {
				t.Errorf("error is not one short line (%d bytes): %q", len(msg), msg)
			}
		})
	}

	// The API server cannot be reached at all: try again later.
	srv.Close()
	_, err = kc.getPod(context.Background(), "shop", "web")
	var cerr *types.Error
	if !errors.As(err, &cerr) || cerr.Code != types.ErrTryAgainLater || !strings.Contains(cerr.Msg, "cannot read pod shop/web from the API server") {
		t.Fatalf("unreachable API server: %v", err)
	}
}

// TestNodeNameDefault: an entry without nodeName names the host.
func TestNodeNameDefault(t *testing.T) {
	c, err := parseConf([]byte(`{"cniVersion":"1.0.0","name":"n","type":"tether-cni","kubeconfig":"/k"}`), false)
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := os.Hostname(); c.NodeName != h || h == "" {
		t.Errorf("nodeName %q, want the host name %q", c.NodeName, h)
	}
	c, err = parseConf([]byte(`{"cniVersion":"1.0.0","name":"n","type":"tether-cni","kubeconfig":"/k","nodeName":"node-7"}`), false)
	if err != nil || c.NodeName != "node-7" {
		t.Errorf("nodeName: %+v, %v", c, err)
	}
}
