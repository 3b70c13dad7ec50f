package identity

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Offline-root mode: the root's key stays on the operator's machine
// (`tether ca offline-root init`); the operator signs an intermediate there
// (`tether ca offline-root sign-intermediate`) and gives tether-ca only the
// intermediate, its key and the root certificate. The CA's state then holds
// no root key: it cannot prepare a new root nor renew its intermediate, and
// says so; a new intermediate is installed by restarting the CA with it.

// OfflineIntermediate is a signing intermediate signed by a root whose key
// the CA never holds.
type OfflineIntermediate struct {
	// Roots is the offline root certificate (DER).
	Roots [][]byte
	// Chain is the intermediate first, then any certificates between it
	// and the root (DER).
	Chain [][]byte
	// Key is the PKCS#8 key of Chain[0].
	Key []byte
}

// ErrOfflineRoot refuses what only the holder of an offline root's key can
// do. It wraps ErrRotation.
var ErrOfflineRoot = fmt.Errorf("%w: the root key is offline", ErrRotation)

// offlineAdvice says how to give an offline-root CA a new intermediate.
const offlineAdvice = "sign a new intermediate on the root's machine with `tether ca offline-root sign-intermediate` and restart tether-ca with --offline-intermediate pointing at it"

// check validates the material: a CA certificate for td that chains to the
// root, with a matching key, valid at now.
func (o *OfflineIntermediate) check(td spiffeid.TrustDomain, now time.Time) (*authority, error) {
	g := Generation{Roots: o.Roots, Chain: o.Chain, ChainKey: o.Key}
	a, err := g.authority()
	if err != nil {
		return nil, err
	}
	inter := a.chain[0]
	if !inter.IsCA || len(inter.URIs) != 1 || inter.URIs[0].String() != td.IDString() {
		return nil, fmt.Errorf("the intermediate is not a CA certificate of trust domain %s (want cA=true and the URI %s)", td, td.IDString())
	}
	if now.Before(inter.NotBefore) || !now.Before(inter.NotAfter) {
		return nil, fmt.Errorf("the intermediate is valid from %s to %s, not now", inter.NotBefore.UTC().Format(time.RFC3339), inter.NotAfter.UTC().Format(time.RFC3339))
	}
	pool := x509.NewCertPool()
	for _, r := range a.roots {
		if !r.IsCA || !bytes.Equal(r.RawSubject, r.RawIssuer) {
			return nil, errors.New("the root certificate is not a self-signed CA")
		}
		pool.AddCert(r)
	}
	inters := x509.NewCertPool()
	for _, c := range a.chain[1:] {
		inters.AddCert(c)
	}
	if _, err := inter.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inters, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("the intermediate does not chain to the root: %w", err)
	}
	return a, nil
}

// offlineGeneration makes the first generation from the operator's files.
func (c *CA) offlineGeneration(st *State, now time.Time) (Generation, error) {
	o := c.cfg.OfflineIntermediate
	if _, err := o.check(c.cfg.TrustDomain, now); err != nil {
		return Generation{}, fmt.Errorf("%w: offline intermediate: %v", ErrConfig, err)
	}
	st.NextGeneration++
	g := Generation{ID: st.NextGeneration, State: Active, CreatedAt: now, Roots: o.Roots, Chain: o.Chain, ChainKey: o.Key, OfflineRoot: true}
	err := g.newJWTKey()
	return g, err
}

// installOffline puts the operator's intermediate in place of the active
// generation's when it is a newer one under the same root (the operator
// renewed it offline and restarted the CA). An intermediate under another
// root is refused: an offline root rotation is not supported yet.
func (c *CA) installOffline(ctx context.Context) error {
	o := c.cfg.OfflineIntermediate
	return c.mutate(ctx, func(st *State, now time.Time) (bool, error) {
		act := st.active()
		if act == nil {
			return false, fmt.Errorf("%w: no active generation", ErrCorruptState)
		}
		if len(act.Chain) > 0 && len(o.Chain) > 0 && bytes.Equal(act.Chain[0], o.Chain[0]) {
			return false, nil // already in place
		}
		if !act.OfflineRoot {
			return false, fmt.Errorf("%w: --offline-intermediate given, but the store holds a CA whose root key is online (generation %d); "+
				"offline-root mode starts on an empty store", ErrConfig, act.ID)
		}
		if !sameDERs(act.Roots, o.Roots) {
			return false, fmt.Errorf("%w: the offline intermediate's root is not the root of the active generation %d; "+
				"rotating an offline root is not supported: sign the intermediate with the root in the bundle", ErrConfig, act.ID)
		}
		a, err := o.check(c.cfg.TrustDomain, now)
		if err != nil {
			return false, fmt.Errorf("%w: offline intermediate: %v", ErrConfig, err)
		}
		cur, err := act.authority()
		if err != nil {
			return false, err
		}
		if !a.chain[0].NotAfter.After(cur.chain[0].NotAfter) {
			return false, fmt.Errorf("%w: the offline intermediate expires at %s, not after the one in use (%s); give the newer one",
				ErrConfig, a.chain[0].NotAfter.UTC().Format(time.RFC3339), cur.chain[0].NotAfter.UTC().Format(time.RFC3339))
		}
		act.Chain, act.ChainKey = o.Chain, o.Key
		c.log.Info("installed the operator's new intermediate (offline root)", slog.Uint64("generation", act.ID),
			slog.Time("not_after", a.chain[0].NotAfter))
		return true, nil
	})
}

// NewOfflineRoot makes a root for offline-root mode: its certificate and
// PKCS#8 key, which stay on the operator's machine.
func NewOfflineRoot(td spiffeid.TrustDomain, ttl time.Duration, now time.Time) (certDER, keyDER []byte, err error) {
	if td.IsZero() {
		return nil, nil, fmt.Errorf("%w: no trust domain", ErrConfig)
	}
	if ttl <= 0 {
		return nil, nil, fmt.Errorf("%w: root lifetime %s must be positive", ErrConfig, ttl)
	}
	key, err := NewKey()
	if err != nil {
		return nil, nil, err
	}
	tmpl, err := caTemplate(td, "Tether offline root", now.Add(-DefaultBackdate), now.Add(ttl), 1)
	if err != nil {
		return nil, nil, err
	}
	if certDER, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key); err != nil {
		return nil, nil, fmt.Errorf("create root: %w", err)
	}
	if keyDER, err = x509.MarshalPKCS8PrivateKey(key); err != nil {
		return nil, nil, err
	}
	return certDER, keyDER, nil
}

// SignOfflineIntermediate makes a signing intermediate for tether-ca under
// an offline root: a new key and its certificate, valid for ttl (cut at the
// root's end).
func SignOfflineIntermediate(rootDER, rootKeyDER []byte, ttl time.Duration, now time.Time) (*OfflineIntermediate, error) {
	root, err := x509.ParseCertificate(rootDER)
	if err != nil {
		return nil, fmt.Errorf("%w: root certificate: %v", ErrConfig, err)
	}
	td, err := x509svid.IDFromCert(root)
	if err != nil {
		// A CA certificate's SPIFFE ID has no path; IDFromCert accepts it.
		return nil, fmt.Errorf("%w: root certificate has no SPIFFE ID: %v", ErrConfig, err)
	}
	k, err := x509.ParsePKCS8PrivateKey(rootKeyDER)
	if err != nil {
		return nil, fmt.Errorf("%w: root key: %v", ErrConfig, err)
	}
	if !publicKeysEqual(root.PublicKey, publicOf(k)) {
		return nil, fmt.Errorf("%w: the root key does not belong to the root certificate", ErrConfig)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("%w: intermediate lifetime %s must be positive", ErrConfig, ttl)
	}
	notAfter := minTime(now.Add(ttl), root.NotAfter)
	if !notAfter.After(now) {
		return nil, fmt.Errorf("%w: the root expired at %s", ErrConfig, root.NotAfter.UTC().Format(time.RFC3339))
	}
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	tmpl, err := caTemplate(td.TrustDomain(), "Tether intermediate (offline root)", now.Add(-DefaultBackdate), notAfter, 0)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, key.Public(), k)
	if err != nil {
		return nil, fmt.Errorf("sign intermediate: %w", err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &OfflineIntermediate{Roots: [][]byte{rootDER}, Chain: [][]byte{der}, Key: pk}, nil
}

func publicOf(k any) any {
	if s, ok := k.(interface{ Public() crypto.PublicKey }); ok {
		return s.Public()
	}
	return nil
}

// offlineWarnEvery is how often warnOffline repeats itself.
const offlineWarnEvery = 10 * time.Minute

// warnOffline logs, every offlineWarnEvery, that an offline-root CA's
// intermediate is due for replacement (1/3 of its life left), which only
// the operator can do.
func (c *CA) warnOffline(a *authority, now time.Time) {
	c.mu.Lock()
	act := c.state.active()
	offline := act != nil && act.OfflineRoot
	c.mu.Unlock()
	if !offline || a == nil {
		return
	}
	inter := a.chain[0]
	due := fraction(inter.NotBefore, inter.NotAfter, 1, 3)
	last := c.offlineWarned.Load()
	if now.Before(due) || (last != 0 && now.Sub(time.Unix(0, last)) < offlineWarnEvery) {
		return
	}
	c.offlineWarned.Store(now.UnixNano())
	c.log.Warn("the signing intermediate needs replacing and the root key is offline: "+offlineAdvice,
		slog.Time("intermediate_not_after", inter.NotAfter), slog.Time("replace_by", due))
}

// Files of offline-root mode. The root's files stay on the operator's
// machine; the intermediate's directory is given to tether-ca.
const (
	OfflineRootCertFile         = "root.pem"
	OfflineRootKeyFile          = "root.key"
	OfflineIntermediateCertFile = "intermediate.pem"
	OfflineIntermediateKeyFile  = "intermediate.key"
)

// WriteOfflineRoot writes a new root's certificate and key (0600) into dir
// (created 0700). It never overwrites an existing root key.
func WriteOfflineRoot(dir string, certDER, keyDER []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	keyPath := filepath.Join(dir, OfflineRootKeyFile)
	f, err := os.OpenFile(keyPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s already exists; refusing to overwrite a root key (choose another directory)", keyPath)
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(dir, OfflineRootCertFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}), 0o644)
}

// LoadOfflineRoot reads the root's certificate and key from dir.
func LoadOfflineRoot(dir string) (certDER, keyDER []byte, err error) {
	certs, err := readPEM(filepath.Join(dir, OfflineRootCertFile), "CERTIFICATE")
	if err != nil {
		return nil, nil, err
	}
	keys, err := readPEM(filepath.Join(dir, OfflineRootKeyFile), "PRIVATE KEY")
	if err != nil {
		return nil, nil, err
	}
	if len(certs) != 1 || len(keys) != 1 {
		return nil, nil, fmt.Errorf("%w: %s: want one root certificate and one key", ErrConfig, dir)
	}
	return certs[0], keys[0], nil
}

// WriteFiles writes the intermediate (chain), its key (0600) and the root
// certificate into dir (created 0700), for tether-ca --offline-intermediate.
func (o *OfflineIntermediate) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	pemOf := func(typ string, ders [][]byte) []byte {
		var b []byte
		for _, d := range ders {
			b = append(b, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
		}
		return b
	}
	if err := WriteFileAtomic(filepath.Join(dir, OfflineIntermediateKeyFile), pemOf("PRIVATE KEY", [][]byte{o.Key}), 0o600); err != nil {
		return err
	}
	if err := WriteFileAtomic(filepath.Join(dir, OfflineIntermediateCertFile), pemOf("CERTIFICATE", o.Chain), 0o644); err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(dir, OfflineRootCertFile), pemOf("CERTIFICATE", o.Roots), 0o644)
}

// LoadOfflineIntermediate reads what WriteFiles wrote. The CA checks it
// (NewCA) against its trust domain and the clock.
func LoadOfflineIntermediate(dir string) (*OfflineIntermediate, error) {
	o := &OfflineIntermediate{}
	var err error
	if o.Chain, err = readPEM(filepath.Join(dir, OfflineIntermediateCertFile), "CERTIFICATE"); err != nil {
		return nil, err
	}
	if o.Roots, err = readPEM(filepath.Join(dir, OfflineRootCertFile), "CERTIFICATE"); err != nil {
		return nil, err
	}
	keys, err := readPEM(filepath.Join(dir, OfflineIntermediateKeyFile), "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	if len(keys) != 1 {
		return nil, fmt.Errorf("%w: %s holds %d keys, want 1", ErrConfig, OfflineIntermediateKeyFile, len(keys))
	}
	o.Key = keys[0]
	return o, nil
}

// readPEM returns the DER of every block of type typ in path; none is an
// error.
func readPEM(path, typ string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	var out [][]byte
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == typ {
			out = append(out, b.Bytes)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s holds no PEM %s", ErrConfig, path, typ)
	}
	return out, nil
}
