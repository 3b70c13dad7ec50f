package kube

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned/typed/certmanager/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/tether-mesh/tether/pkg/identity"
)

// CertManagerUpstream defaults.
const (
	DefaultRequestPrefix  = "tether-ca-"
	DefaultRequestsKept   = 3
	DefaultRequestTimeout = 5 * time.Minute
	// ComponentLabel marks the CertificateRequests the CA files.
	ComponentLabel = "app.kubernetes.io/component"
	componentValue = "ca-intermediate"
	// RequestedAtAnnotation orders the requests more finely than their
	// creationTimestamp (whole seconds) does.
	RequestedAtAnnotation = "tether.dev/requested-at"
)

// CertManagerConfig configures a CertManagerUpstream. Zero values take the
// defaults.
type CertManagerConfig struct {
	// Client files CertificateRequests: the cert-manager typed client
	// (cmclient.NewForConfig) fits. The CA's ServiceAccount needs create,
	// get, list, watch and delete on certificaterequests.cert-manager.io
	// in Namespace.
	Client cmclient.CertificateRequestsGetter
	// Namespace the requests are filed in (default tether-system); a
	// namespaced Issuer must live there.
	Namespace string
	// IssuerName, IssuerKind ("Issuer", the default, or "ClusterIssuer")
	// and IssuerGroup (default cert-manager.io) name the issuer.
	IssuerName  string
	IssuerKind  string
	IssuerGroup string
	// NamePrefix starts the names of the requests (default "tether-ca-").
	NamePrefix string
	// Keep is how many finished requests are kept for inspection (default 3).
	Keep int
	// Timeout bounds the wait for one request (default 5m), so that an
	// issuer that never answers does not stall the CA.
	Timeout time.Duration
	Clock   identity.Clock
	Logger  *slog.Logger
}

// CertManagerUpstream has the CA's signing intermediate issued by a
// cert-manager issuer, so that organisations keep the root in their own PKI.
// Each SignIntermediate files a CertificateRequest (isCA, cert sign + CRL
// sign + digital signature, duration = the TTL asked for) and waits until
// the issuer signs it or refuses. The request must be approved, by
// cert-manager's default approver or by a policy such as approver-policy.
type CertManagerUpstream struct {
	cfg CertManagerConfig
	log *slog.Logger
}

var _ identity.Upstream = (*CertManagerUpstream)(nil)

// ErrUpstreamRefused means the issuer denied or failed a request, or
// returned something unusable. The message says why.
var ErrUpstreamRefused = errors.New("cert-manager did not issue the intermediate")

// NewCertManagerUpstream checks cfg and returns the upstream. It does not
// contact the API server.
func NewCertManagerUpstream(cfg CertManagerConfig) (*CertManagerUpstream, error) {
	if cfg.Client == nil {
		return nil, errors.New("cert-manager upstream: no cert-manager client")
	}
	if cfg.IssuerName == "" {
		return nil, errors.New("cert-manager upstream: no issuer name")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	switch cfg.IssuerKind {
	case "":
		cfg.IssuerKind = cmapi.IssuerKind
	case cmapi.IssuerKind, cmapi.ClusterIssuerKind:
	default:
		if cfg.IssuerGroup == "" || cfg.IssuerGroup == "cert-manager.io" {
			return nil, fmt.Errorf("cert-manager upstream: issuer kind %q is neither Issuer nor ClusterIssuer", cfg.IssuerKind)
		}
	}
	if cfg.IssuerGroup == "" {
		cfg.IssuerGroup = "cert-manager.io"
	}
	if cfg.NamePrefix == "" {
		cfg.NamePrefix = DefaultRequestPrefix
	}
	if cfg.Keep <= 0 {
		cfg.Keep = DefaultRequestsKept
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultRequestTimeout
	}
	cfg.Clock, cfg.Logger = clockAndLogger(cfg.Clock, cfg.Logger)
	u := &CertManagerUpstream{cfg: cfg}
	u.log = cfg.Logger.With(slog.String("upstream", u.Name()))
	return u, nil
}

// Name is, for example, "cert-manager ClusterIssuer/corp-ca".
func (u *CertManagerUpstream) Name() string {
	return "cert-manager " + u.cfg.IssuerKind + "/" + u.cfg.IssuerName
}

// SignIntermediate files a CertificateRequest for csrDER and returns the
// issued chain and the issuer's roots. It gives up when ctx ends or after
// the configured Timeout. Refusals wrap ErrUpstreamRefused and name the
// condition's reason and message.
func (u *CertManagerUpstream) SignIntermediate(ctx context.Context, csrDER []byte, ttl time.Duration) (*identity.UpstreamResult, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("cert-manager upstream: CSR: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, u.cfg.Timeout)
	defer cancel()
	crs := u.cfg.Client.CertificateRequests(u.cfg.Namespace)
	cr, err := crs.Create(ctx, &cmapi.CertificateRequest{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:    u.cfg.Namespace,
			GenerateName: u.cfg.NamePrefix,
			Labels:       map[string]string{PartOfLabel: PartOfValue, ComponentLabel: componentValue},
			Annotations:  map[string]string{RequestedAtAnnotation: u.cfg.Clock.Now().UTC().Format(time.RFC3339Nano)},
		},
		Spec: cmapi.CertificateRequestSpec{
			Duration:  &metav1.Duration{Duration: ttl},
			IssuerRef: cmmeta.IssuerReference{Name: u.cfg.IssuerName, Kind: u.cfg.IssuerKind, Group: u.cfg.IssuerGroup},
			Request:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}),
			IsCA:      true,
			Usages:    []cmapi.KeyUsage{cmapi.UsageCertSign, cmapi.UsageCRLSign, cmapi.UsageDigitalSignature},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, u.apiError("create CertificateRequest", err)
	}
	ref := u.cfg.Namespace + "/" + cr.Name
	u.log.Info("filed CertificateRequest for the CA intermediate; waiting for the issuer", slog.String("certificate_request", ref))
	defer u.prune(context.WithoutCancel(ctx), cr.Name)

	cr, err = u.wait(ctx, cr)
	if err != nil {
		return nil, fmt.Errorf("CertificateRequest %s: %w", ref, err)
	}
	res, inter, err := u.result(cr, csr)
	if err != nil {
		return nil, fmt.Errorf("CertificateRequest %s: %w: %v", ref, ErrUpstreamRefused, err)
	}
	u.log.Info("intermediate issued", slog.String("certificate_request", ref), slog.Time("not_after", inter.NotAfter))
	return res, nil
}

// wait follows cr until it is issued (returned) or refused (error).
func (u *CertManagerUpstream) wait(ctx context.Context, cr *cmapi.CertificateRequest) (*cmapi.CertificateRequest, error) {
	crs := u.cfg.Client.CertificateRequests(u.cfg.Namespace)
	backoff := 200 * time.Millisecond
	for {
		if done, err := finished(cr); done {
			return cr, err
		}
		// Watch from the version seen, so that no change is missed.
		w, err := crs.Watch(ctx, metav1.ListOptions{
			FieldSelector:   fields.OneTermEqualSelector("metadata.name", cr.Name).String(),
			ResourceVersion: cr.ResourceVersion,
		})
		if err == nil {
			var (
				got  *cmapi.CertificateRequest
				done bool
			)
			got, done, err = u.follow(ctx, w)
			w.Stop()
			if done {
				return got, err
			}
			if got != nil {
				cr = got
			}
		}
		if ctx.Err() != nil {
			return nil, u.timeout(ctx, cr)
		}
		if err != nil {
			u.log.Warn("cannot follow the CertificateRequest; retrying", slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
			return nil, u.timeout(ctx, cr)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
		latest, err := crs.Get(ctx, cr.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return nil, fmt.Errorf("%w: it was deleted before it was issued", ErrUpstreamRefused)
		case err == nil:
			cr = latest
		case ctx.Err() != nil:
			return nil, u.timeout(ctx, cr)
		}
	}
}

// follow reads watch events until the request finishes (done, with the
// request or the refusal) or the watch ends (not done, with the latest
// version seen if any, and the error if any).
func (u *CertManagerUpstream) follow(ctx context.Context, w watch.Interface) (latest *cmapi.CertificateRequest, done bool, err error) {
	for {
		select {
		case <-ctx.Done():
			return latest, false, ctx.Err()
		case ev, ok := <-w.ResultChan():
			if !ok {
				return latest, false, nil
			}
			switch ev.Type {
			case watch.Deleted:
				return nil, true, fmt.Errorf("%w: it was deleted before it was issued", ErrUpstreamRefused)
			case watch.Error:
				return latest, false, apierrors.FromObject(ev.Object)
			}
			cr, ok := ev.Object.(*cmapi.CertificateRequest)
			if !ok {
				continue
			}
			latest = cr
			if done, err := finished(cr); done {
				return cr, true, err
			}
		}
	}
}

// finished reports whether cr is issued (nil error) or refused.
func finished(cr *cmapi.CertificateRequest) (bool, error) {
	for _, typ := range []cmapi.CertificateRequestConditionType{cmapi.CertificateRequestConditionDenied, cmapi.CertificateRequestConditionInvalidRequest} {
		if c := condition(cr, typ); c != nil && c.Status == cmmeta.ConditionTrue {
			return true, fmt.Errorf("%w: %s: %s: %s", ErrUpstreamRefused, typ, c.Reason, c.Message)
		}
	}
	c := condition(cr, cmapi.CertificateRequestConditionReady)
	switch {
	case c == nil:
		return false, nil
	case c.Status == cmmeta.ConditionTrue && len(cr.Status.Certificate) > 0:
		return true, nil
	case c.Status == cmmeta.ConditionFalse && (c.Reason == cmapi.CertificateRequestReasonFailed || c.Reason == cmapi.CertificateRequestReasonDenied):
		return true, fmt.Errorf("%w: Ready=False: %s: %s (check the issuer's status and cert-manager's logs)", ErrUpstreamRefused, c.Reason, c.Message)
	}
	return false, nil
}

func condition(cr *cmapi.CertificateRequest, typ cmapi.CertificateRequestConditionType) *cmapi.CertificateRequestCondition {
	for i := range cr.Status.Conditions {
		if cr.Status.Conditions[i].Type == typ {
			return &cr.Status.Conditions[i]
		}
	}
	return nil
}

// timeout describes why the wait ended, with the request's last state.
func (u *CertManagerUpstream) timeout(ctx context.Context, cr *cmapi.CertificateRequest) error {
	state := "no Ready condition yet"
	if c := condition(cr, cmapi.CertificateRequestConditionReady); c != nil {
		state = fmt.Sprintf("Ready=%s: %s: %s", c.Status, c.Reason, c.Message)
	}
	if c := condition(cr, cmapi.CertificateRequestConditionApproved); c == nil {
		state += "; not approved (is an approver running?)"
	}
	return fmt.Errorf("not issued in time (%s; check that %s exists and is ready): %w", state, u.Name(), context.Cause(ctx))
}

// result checks the issued certificate and splits it into chain and roots.
func (u *CertManagerUpstream) result(cr *cmapi.CertificateRequest, csr *x509.CertificateRequest) (*identity.UpstreamResult, *x509.Certificate, error) {
	issued, err := parsePEMCerts(cr.Status.Certificate)
	if err != nil {
		return nil, nil, fmt.Errorf("status.certificate: %v", err)
	}
	if len(issued) == 0 {
		return nil, nil, errors.New("status.certificate holds no certificate")
	}
	cas, err := parsePEMCerts(cr.Status.CA)
	if err != nil {
		return nil, nil, fmt.Errorf("status.ca: %v", err)
	}
	inter := issued[0]
	if !publicKeysEqual(inter.PublicKey, csr.PublicKey) {
		return nil, nil, errors.New("the issued certificate is not for the CA's key")
	}
	if !inter.IsCA || inter.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, nil, fmt.Errorf("%s issued a certificate that is not a signing CA (isCA=%t); use an issuer that can sign CA certificates", u.Name(), inter.IsCA)
	}
	res := &identity.UpstreamResult{}
	for _, c := range issued {
		if !selfSigned(c) {
			res.Chain = append(res.Chain, c.Raw)
		}
	}
	roots := cas
	if len(roots) == 0 {
		for i := len(issued) - 1; i > 0; i-- {
			if selfSigned(issued[i]) {
				roots = issued[i : i+1]
				break
			}
		}
	}
	if len(roots) == 0 {
		return nil, nil, fmt.Errorf("%s returned no CA certificate (status.ca is empty and the chain ends below a root); configure the issuer to publish its CA", u.Name())
	}
	rootPool, interPool := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
		res.Roots = append(res.Roots, r.Raw)
	}
	for _, c := range issued[1:] {
		interPool.AddCert(c)
	}
	if _, err := inter.Verify(x509.VerifyOptions{
		Roots: rootPool, Intermediates: interPool, CurrentTime: u.cfg.Clock.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, nil, fmt.Errorf("the issued certificate does not chain to the issuer's CA: %v", err)
	}
	return res, inter, nil
}

// prune deletes the oldest requests this upstream filed, keeping Keep
// with the current one.
func (u *CertManagerUpstream) prune(ctx context.Context, current string) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	crs := u.cfg.Client.CertificateRequests(u.cfg.Namespace)
	list, err := crs.List(ctx, metav1.ListOptions{LabelSelector: PartOfLabel + "=" + PartOfValue + "," + ComponentLabel + "=" + componentValue})
	if err != nil {
		u.log.Warn("cannot list old CertificateRequests to delete them", slog.Any("error", u.apiError("list", err)))
		return
	}
	old := slices.DeleteFunc(list.Items, func(cr cmapi.CertificateRequest) bool {
		return cr.Name == current || !strings.HasPrefix(cr.Name, u.cfg.NamePrefix) || cr.DeletionTimestamp != nil
	})
	requested := func(cr *cmapi.CertificateRequest) time.Time {
		if t, err := time.Parse(time.RFC3339Nano, cr.Annotations[RequestedAtAnnotation]); err == nil {
			return t
		}
		return cr.CreationTimestamp.Time
	}
	slices.SortFunc(old, func(a, b cmapi.CertificateRequest) int {
		return requested(&b).Compare(requested(&a)) // newest first
	})
	for _, cr := range old[min(u.cfg.Keep-1, len(old)):] {
		err := crs.Delete(ctx, cr.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			u.log.Warn("cannot delete an old CertificateRequest", slog.String("certificate_request", cr.Name), slog.Any("error", err))
			continue
		}
		u.log.Debug("deleted old CertificateRequest", slog.String("certificate_request", cr.Name))
	}
}

func (u *CertManagerUpstream) apiError(what string, err error) error {
	switch {
	case apierrors.IsForbidden(err):
		return fmt.Errorf("%s in %s: %w (grant the CA's ServiceAccount create, get, list, watch and delete on certificaterequests.cert-manager.io there)", what, u.cfg.Namespace, err)
	case apierrors.IsNotFound(err):
		return fmt.Errorf("%s in %s: %w (is cert-manager installed, and does the namespace exist?)", what, u.cfg.Namespace, err)
	}
	return fmt.Errorf("%s in %s: %w", what, u.cfg.Namespace, err)
}

// parsePEMCerts parses every CERTIFICATE block of data; anything else in it
// is an error.
func parsePEMCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := bytes.TrimSpace(data); len(rest) > 0; rest = bytes.TrimSpace(rest) {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, errors.New("not PEM")
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	return certs, nil
}

func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}
