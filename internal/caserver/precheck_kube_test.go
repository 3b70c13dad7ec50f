package caserver

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// tokenReviews counts the TokenReviews the API server has served, from its
// own apiserver_request_total.
func tokenReviews(t *testing.T, env *kubetest.Env) int {
	t.Helper()
	raw, err := env.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	s := bufio.NewScanner(bytes.NewReader(raw))
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		line := s.Text()
		if !strings.HasPrefix(line, "apiserver_request_total{") || !strings.Contains(line, `resource="tokenreviews"`) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		n += int(v)
	}
	return n
}

// TestInvalidTokensCostNoTokenReview runs tether-ca in Kubernetes mode and
// sends it invalid tokens over gRPC: the API server's own request counter
// shows that none of them reached it, while a good token still does.
func TestInvalidTokensCostNoTokenReview(t *testing.T) {
	env := kubetest.Start(t)
	env.EnsureNamespace(t, "tether-system")
	c := validConfig(t)
	c.Store, c.StoreDir = "kubernetes", ""
	c.AdminSocket = filepath.Join(t.TempDir(), "admin.sock")
	c.BundleFile = filepath.Join(t.TempDir(), "bundle.pem")
	c.Kube = KubeConfig{Kubeconfig: env.Kubeconfig(t), Namespace: "tether-system", SecretName: "tether-ca", LeaseName: "tether-ca",
		Identity: "ca-0", TokenReview: true, Audience: "tether-ca"}
	svc := runService(t, c)
	testutil.Eventually(t, "CA serving", 30*time.Second, func() bool {
		_, err := identity.LoadBundlePEM(c.BundleFile, c.TrustDomain)
		return err == nil && svc.Addr("grpc") != nil
	})
	b, err := identity.LoadBundlePEM(c.BundleFile, c.TrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := identity.Dial(svc.Addr("grpc").String(), b.TrustDomain(), b, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	sign := func(token string) error {
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _, err := cl.FetchSVID(rctx, &cav1.Credential{Kind: identity.KindK8sSAT, Token: token})
		return err
	}

	real := env.PodToken(t, "shop", "web", "web-0", "tether-ca", 10*time.Minute)
	invalid := map[string]string{
		"garbage":        "not-a-token",
		"wrong audience": env.PodToken(t, "shop", "web", "web-0", "vault", time.Hour),
		// A real token with its payload replaced: the signature no longer matches.
		"tampered": tamper(t, real),
	}
	before := tokenReviews(t, env)
	for name, tok := range invalid {
		for range 20 {
			if err := sign(tok); status.Code(err) != codes.Unauthenticated {
				t.Fatalf("%s: err = %v, want Unauthenticated", name, err)
			}
		}
	}
	if n := tokenReviews(t, env) - before; n != 0 {
		t.Fatalf("60 invalid tokens cost %d TokenReviews, want 0", n)
	}
	if err := sign(env.PodToken(t, "shop", "web", "web-0", "tether-ca", time.Hour)); err != nil {
		t.Fatalf("good token: %v", err)
	}
	if n := tokenReviews(t, env) - before; n != 1 {
		t.Fatalf("a good token cost %d TokenReviews, want 1", n)
	}
}

// tamper names another ServiceAccount in a real token's payload, keeping
// its header and signature.
func tamper(t *testing.T, token string) string {
	parts := strings.Split(token, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	forged := strings.Replace(string(payload), "system:serviceaccount:shop:web", "system:serviceaccount:kube-system:admin", 1)
	if forged == string(payload) {
		t.Fatalf("no subject to replace in %s", payload)
	}
	parts[1] = base64.RawURLEncoding.EncodeToString([]byte(forged))
	return strings.Join(parts, ".")
}
