package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/tether-mesh/tether/pkg/identity"
)

// DefaultStateKey is the key of the Secret that holds the state JSON.
const DefaultStateKey = "state.json"

// SecretStoreConfig configures a SecretStore. Empty names take the defaults.
type SecretStoreConfig struct {
	// Client reaches Secrets: kubernetes.Interface.CoreV1() fits. The CA's
	// ServiceAccount needs get, create and update on secrets in Namespace.
	Client    corev1client.SecretsGetter
	Namespace string // default tether-system
	Name      string // default tether-ca
	Key       string // default state.json
	Logger    *slog.Logger
}

// SecretStore keeps the CA state (identity.State as JSON) under one key of
// a Kubernetes Secret. Its revision is the Secret's resourceVersion, so Save
// is a compare-and-swap done by the API server: an Update carrying the
// revision, or a Create when the revision is "".
//
// A Secret created beforehand without the key (for example by a Helm chart,
// to set labels) counts as empty and is filled by the first Save, keeping
// its other keys, labels and annotations. A Secret whose key holds anything
// but a valid state is reported as identity.ErrCorruptState and never
// overwritten. It is safe for concurrent use.
type SecretStore struct {
	client    corev1client.SecretsGetter
	namespace string
	name      string
	key       string
	log       *slog.Logger
}

var _ identity.Store = (*SecretStore)(nil)

// NewSecretStore checks cfg and returns the store. It does not contact the
// API server.
func NewSecretStore(cfg SecretStoreConfig) (*SecretStore, error) {
	if cfg.Client == nil {
		return nil, errors.New("secret store: no Kubernetes client")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	if cfg.Name == "" {
		cfg.Name = DefaultSecretName
	}
	if cfg.Key == "" {
		cfg.Key = DefaultStateKey
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &SecretStore{client: cfg.Client, namespace: cfg.Namespace, name: cfg.Name, key: cfg.Key, log: cfg.Logger}, nil
}

// String names the Secret, for logs.
func (s *SecretStore) String() string {
	return fmt.Sprintf("Secret %s/%s key %s", s.namespace, s.name, s.key)
}

// Load reads the state. It returns identity.ErrNotFound when the Secret or
// its key does not exist.
func (s *SecretStore) Load(ctx context.Context) (*identity.State, string, error) {
	sec, err := s.client.Secrets(s.namespace).Get(ctx, s.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, "", identity.ErrNotFound
	}
	if err != nil {
		return nil, "", s.apiError("read", err)
	}
	data, ok := sec.Data[s.key]
	if !ok {
		return nil, "", identity.ErrNotFound
	}
	st, err := identity.DecodeState(data)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w (fix or delete the key by hand; the CA will not overwrite it)", s, err)
	}
	return st, sec.ResourceVersion, nil
}

// Save writes st if the Secret is still at revision rev ("" when no state
// was stored yet), and returns the new revision.
func (s *SecretStore) Save(ctx context.Context, st *identity.State, rev string) (string, error) {
	data, err := st.Encode()
	if err != nil {
		return "", fmt.Errorf("%s: encode: %w", s, err)
	}
	secrets := s.client.Secrets(s.namespace)
	if rev == "" {
		created, err := secrets.Create(ctx, s.newSecret(data), metav1.CreateOptions{})
		switch {
		case err == nil:
			s.log.Info("created CA state Secret", slog.String("namespace", s.namespace), slog.String("name", s.name))
			return created.ResourceVersion, nil
		case !apierrors.IsAlreadyExists(err):
			return "", s.apiError("create", err)
		}
	}
	cur, err := secrets.Get(ctx, s.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", identity.ErrConflict // deleted since it was read
	}
	if err != nil {
		return "", s.apiError("read", err)
	}
	_, has := cur.Data[s.key]
	if (rev == "" && has) || (rev != "" && cur.ResourceVersion != rev) {
		// Someone stored a state since we found none, or changed it since rev.
		return "", identity.ErrConflict
	}
	upd := cur.DeepCopy()
	if upd.Data == nil {
		upd.Data = map[string][]byte{}
	}
	upd.Data[s.key] = data
	if upd.Labels == nil {
		upd.Labels = map[string]string{}
	}
	upd.Labels[PartOfLabel] = PartOfValue
	updated, err := secrets.Update(ctx, upd, metav1.UpdateOptions{})
	switch {
	case apierrors.IsConflict(err), apierrors.IsNotFound(err):
		return "", identity.ErrConflict
	case err != nil:
		return "", s.apiError("update", err)
	}
	return updated.ResourceVersion, nil
}

func (s *SecretStore) newSecret(data []byte) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: s.namespace,
			Name:      s.name,
			Labels:    map[string]string{PartOfLabel: PartOfValue},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{s.key: data},
	}
}

// apiError wraps an API error with what the operator can do about it.
func (s *SecretStore) apiError(verb string, err error) error {
	hint := ""
	switch {
	case apierrors.IsForbidden(err):
		hint = fmt.Sprintf(" (grant the CA's ServiceAccount get, create and update on secrets in namespace %s)", s.namespace)
	case apierrors.IsNotFound(err):
		hint = fmt.Sprintf(" (does namespace %s exist?)", s.namespace)
	case apierrors.IsRequestEntityTooLargeError(err):
		hint = " (the state outgrew a Secret's 1 MiB; prune join tokens)"
	case apierrors.IsInvalid(err):
		hint = " (is the Secret immutable? recreate it as a mutable Opaque Secret)"
	}
	return fmt.Errorf("%s: %s: %w%s", s, verb, err, hint)
}
