package kube

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// TestSecretStore checks the Secret store against a real API server: a CA
// bootstraps into it, another replica loads the same CA, compare-and-swap
// holds, and bad content is reported and left alone.
func TestSecretStore(t *testing.T) {
	env := kubetest.Start(t)
	env.EnsureNamespace(t, DefaultNamespace)
	ctx := testContext(t, time.Minute)
	secrets := env.Client.CoreV1().Secrets(DefaultNamespace)
	newStore := func(t *testing.T, name string) *SecretStore {
		t.Helper()
		s, err := NewSecretStore(SecretStoreConfig{Client: env.Client.CoreV1(), Name: name, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	newCA := func(s identity.Store) (*identity.CA, error) {
		return identity.NewCA(ctx, identity.Config{TrustDomain: testutil.TrustDomain, Store: s, Logger: testLogger(t)})
	}

	t.Run("CA bootstraps into the Secret and a second replica loads it", func(t *testing.T) {
		s := newStore(t, "") // the default, tether-system/tether-ca
		if _, _, err := s.Load(ctx); !errors.Is(err, identity.ErrNotFound) {
			t.Fatalf("Load of a missing Secret: %v, want ErrNotFound", err)
		}
		ca1, err := newCA(s)
		if err != nil {
			t.Fatal(err)
		}
		sec, err := secrets.Get(ctx, DefaultSecretName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sec.Type != corev1.SecretTypeOpaque || sec.Labels[PartOfLabel] != PartOfValue || len(sec.Data[DefaultStateKey]) == 0 {
			t.Fatalf("Secret: type %q, labels %v, keys %d", sec.Type, sec.Labels, len(sec.Data))
		}
		ca2, err := newCA(newStore(t, ""))
		if err != nil {
			t.Fatal(err)
		}
		r1, r2 := ca1.Bundle().Bundle.X509Authorities(), ca2.Bundle().Bundle.X509Authorities()
		if len(r1) != 1 || len(r2) != 1 || !r1[0].Equal(r2[0]) {
			t.Fatalf("the second replica has other roots: %d vs %d", len(r1), len(r2))
		}
		// A rotation by one replica reaches the other on its next tick.
		if err := ca1.Rotate(ctx, identity.StepPrepare, false); err != nil {
			t.Fatal(err)
		}
		if err := ca2.Tick(ctx); err != nil {
			t.Fatal(err)
		}
		if n := len(ca2.Bundle().Bundle.X509Authorities()); n != 2 {
			t.Fatalf("after the other replica prepared a rotation, %d roots, want 2", n)
		}
	})

	t.Run("compare and swap", func(t *testing.T) {
		s := newStore(t, "cas")
		st := testState(t)
		rev1, err := s.Save(ctx, st, "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Save(ctx, st, ""); !errors.Is(err, identity.ErrConflict) {
			t.Fatalf("second create: %v, want ErrConflict", err)
		}
		got, rev, err := s.Load(ctx)
		if err != nil || rev != rev1 || got.TrustDomain != st.TrustDomain {
			t.Fatalf("Load = %v, %q, %v; want the saved state at %q", got, rev, err, rev1)
		}
		st.BundleSequence++
		rev2, err := s.Save(ctx, st, rev1)
		if err != nil || rev2 == rev1 {
			t.Fatalf("update: %q, %v", rev2, err)
		}
		st.BundleSequence++
		if _, err := s.Save(ctx, st, rev1); !errors.Is(err, identity.ErrConflict) {
			t.Fatalf("update at a stale revision: %v, want ErrConflict", err)
		}
		got, rev, err = s.Load(ctx)
		if err != nil || rev != rev2 || got.BundleSequence != st.BundleSequence-1 {
			t.Fatalf("after the refused update: %+v, %q, %v", got, rev, err)
		}
		if err := secrets.Delete(ctx, "cas", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Save(ctx, st, rev2); !errors.Is(err, identity.ErrConflict) {
			t.Fatalf("update of a deleted Secret: %v, want ErrConflict", err)
		}
	})

	t.Run("a Secret created beforehand without the key is filled", func(t *testing.T) {
		pre := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "precreated", Namespace: DefaultNamespace,
				Labels: map[string]string{"owner": "helm"}, Annotations: map[string]string{"note": "keep"}},
			Data: map[string][]byte{"other": []byte("x")},
		}
		if _, err := secrets.Create(ctx, pre, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		s := newStore(t, "precreated")
		if _, _, err := s.Load(ctx); !errors.Is(err, identity.ErrNotFound) {
			t.Fatalf("Load: %v, want ErrNotFound", err)
		}
		if _, err := newCA(s); err != nil {
			t.Fatal(err)
		}
		sec, err := secrets.Get(ctx, "precreated", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if string(sec.Data["other"]) != "x" || sec.Labels["owner"] != "helm" || sec.Annotations["note"] != "keep" ||
			sec.Labels[PartOfLabel] != PartOfValue || len(sec.Data[DefaultStateKey]) == 0 {
			t.Fatalf("Secret after the first save: labels %v, annotations %v, keys %v", sec.Labels, sec.Annotations, keys(sec.Data))
		}
	})

	corrupt := []struct {
		name string
		data []byte
	}{
		{"not JSON", []byte("hello")},
		{"JSON of another schema", []byte(`{"version":99,"trust_domain":"cluster.local"}`)},
		{"empty", []byte{}},
	}
	for i, tt := range corrupt {
		t.Run("corrupt content: "+tt.name, func(t *testing.T) {
			name := "corrupt-" + string(rune('a'+i))
			before, err := secrets.Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: DefaultNamespace},
				Data:       map[string][]byte{DefaultStateKey: tt.data},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			s := newStore(t, name)
			if _, _, err := s.Load(ctx); !errors.Is(err, identity.ErrCorruptState) {
				t.Fatalf("Load: %v, want ErrCorruptState", err)
			}
			if _, err := newCA(s); !errors.Is(err, identity.ErrCorruptState) {
				t.Fatalf("NewCA: %v, want ErrCorruptState", err)
			}
			if _, err := s.Save(ctx, testState(t), ""); !errors.Is(err, identity.ErrConflict) {
				t.Fatalf("Save over it: %v, want ErrConflict", err)
			}
			after, err := secrets.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if after.ResourceVersion != before.ResourceVersion || !bytes.Equal(after.Data[DefaultStateKey], tt.data) {
				t.Fatal("the corrupt Secret was changed")
			}
		})
	}

	t.Run("no permission", func(t *testing.T) {
		cfg := env.ServiceAccountConfig(t, DefaultNamespace, "no-rbac")
		s, err := NewSecretStore(SecretStoreConfig{Client: kubernetes.NewForConfigOrDie(cfg).CoreV1()})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Load(ctx); err == nil || !strings.Contains(err.Error(), "grant the CA's ServiceAccount get, create and update on secrets") {
			t.Fatalf("Load without RBAC = %v, want an error naming the permission", err)
		}
	})

	t.Run("missing namespace", func(t *testing.T) {
		s, err := NewSecretStore(SecretStoreConfig{Client: env.Client.CoreV1(), Namespace: "nowhere"})
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Save(ctx, testState(t), "")
		if err == nil || errors.Is(err, identity.ErrConflict) {
			t.Fatalf("Save into a missing namespace: %v", err)
		}
		t.Log(err)
	})
}

// testState is a valid CA state, taken from a CA on a disk store.
func testState(t *testing.T) *identity.State {
	t.Helper()
	dir := t.TempDir()
	store, err := identity.NewDiskStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := identity.NewCA(context.Background(), identity.Config{TrustDomain: testutil.TrustDomain, Store: store}); err != nil {
		t.Fatal(err)
	}
	st, _, err := store.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
