package check

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tether-mesh/tether/pkg/inject"
)

// The injector's serving certificate: self-managed, or cert-manager's.
var servingSecrets = []string{"tether-injector-tls", "tether-injector-serving"}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }

// webhookCABundle: the webhook configuration exists with both webhooks,
// each with a caBundle that verifies the injector's serving certificate
// (from its Secret) for the Service's DNS name.
func (r *runner) webhookCABundle(ctx context.Context) Check {
	c := Check{Name: "webhook-ca-bundle", Category: catInject}
	restart := fmt.Sprintf("kubectl -n %s rollout restart deploy/%s (the injector rewrites the caBundle from its Secret within a minute)", r.o.Namespace, webhookName)
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	mwc, err := r.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(cctx, webhookName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		c.Result, c.Message = Fail, "no MutatingWebhookConfiguration "+webhookName+": no pod is injected"
		c.Hint = "install Tether (docs/install.md)"
		return c
	}
	if err != nil {
		return r.cannot(c, apiError("get MutatingWebhookConfiguration "+webhookName, err))
	}
	cert, certErr := r.servingCert(ctx)
	var bad []string
	seen := map[string]bool{}
	for _, wh := range mwc.Webhooks {
		seen[wh.Name] = true
		if msg := r.verifyWebhook(wh, cert); msg != "" {
			bad = append(bad, wh.Name+": "+msg)
		}
	}
	for _, name := range []string{"inject.tether.dev", "inject-required.tether.dev"} {
		if !seen[name] {
			bad = append(bad, "webhook "+name+" is missing from the configuration")
		}
	}
	switch {
	case len(bad) > 0:
		c.Result, c.Message, c.Details = Fail, "the API server cannot call the injector as configured", bad
		c.Hint = restart + "; if a webhook is missing, apply the configuration again (tether install | kubectl apply --server-side -f -)"
	case certErr != nil:
		c.Result, c.Message = Warn, "every webhook has a caBundle, but the serving certificate could not be compared with it: "+certErr.Error()
		c.Hint = "give the caller get on Secrets in " + r.o.Namespace + ", or rely on the dry-run check below, which calls the webhook"
	default:
		c.Result = OK
		c.Message = fmt.Sprintf("the caBundle of both webhooks verifies the injector's serving certificate for %s.%s.svc (expires %s)", webhookName, r.o.Namespace, when(cert.NotAfter, r.now))
	}
	return c
}

// verifyWebhook says what is wrong with one webhook's client
// configuration ("" when nothing is).
func (r *runner) verifyWebhook(wh admissionregistrationv1.MutatingWebhook, cert *x509.Certificate) string {
	cc := wh.ClientConfig
	if cc.Service == nil || cc.Service.Name != webhookName || cc.Service.Namespace != r.o.Namespace {
		return fmt.Sprintf("does not call the Service %s/%s", r.o.Namespace, webhookName)
	}
	if len(cc.CABundle) == 0 {
		return "caBundle is empty: the API server cannot verify the injector, so every pod creation in a labelled namespace fails"
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(cc.CABundle) {
		return "caBundle holds no PEM certificate"
	}
	if cert == nil {
		return ""
	}
	_, err := cert.Verify(x509.VerifyOptions{
		Roots: pool, DNSName: webhookName + "." + r.o.Namespace + ".svc", CurrentTime: r.now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return "caBundle does not verify the injector's serving certificate: " + err.Error()
	}
	return ""
}

// servingCert reads the injector's current serving certificate from its
// Secret.
func (r *runner) servingCert(ctx context.Context) (*x509.Certificate, error) {
	var errs []string
	for _, name := range servingSecrets {
		cctx, cancel := r.ctx(ctx)
		s, err := r.client.CoreV1().Secrets(r.o.Namespace).Get(cctx, name, metav1.GetOptions{})
		cancel()
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			errs = append(errs, apiError("get Secret "+r.o.Namespace+"/"+name, err).Error())
			continue
		}
		certs, err := parseCerts(s.Data["tls.crt"])
		if err != nil || len(certs) == 0 {
			return nil, fmt.Errorf("Secret %s/%s has no certificate in tls.crt (%v)", r.o.Namespace, name, err)
		}
		return certs[0], nil
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil, fmt.Errorf("neither Secret %s exists in %s", strings.Join(servingSecrets, " nor "), r.o.Namespace)
}

// injection creates a pod in every labelled namespace as a server-side
// dry run: the API server calls the webhook, which must inject it, and
// Pod Security then judges the injected pod. It returns the injection
// check and the pod-security check.
func (r *runner) injection(ctx context.Context) (Check, Check) {
	c := Check{Name: "webhook-injects", Category: catInject}
	cni := r.injectorCNI(ctx)
	nss, err := r.labelledNamespaces(ctx)
	if err != nil {
		ps := podSecurityCheck(nil, err, cni)
		ps.Category = catInject
		return r.cannot(c, err), ps
	}
	if len(nss) == 0 {
		c.Result, c.Message = Warn, "no namespace is labelled "+inject.InjectLabel+"=enabled or required, so no pod is injected and the webhook could not be tried"
		c.Hint = "label the namespaces to mesh: kubectl label namespace NS " + inject.InjectLabel + "=enabled"
		ps := podSecurityCheck(nil, nil, cni)
		ps.Category = catInject
		return c, ps
	}
	var runs []dryRun
	var failed, notInjected, unsure, ok []string
	for _, ns := range nss[:min(len(nss), maxListed)] {
		d := r.tryPod(ctx, ns, appPod(ns.Name))
		runs = append(runs, d)
		switch {
		case d.err == nil && d.injected:
			ok = append(ok, ns.Name)
		case d.err == nil:
			notInjected = append(notInjected, ns.Name+": the API server admitted the pod without the sidecar")
		case d.kind == "webhook":
			failed = append(failed, ns.Name+": "+firstLine(d.err.Error()))
		case d.kind == "pod-security":
			ok = append(ok, ns.Name+" (injected; refused by Pod Security, see pod-security)")
		default:
			unsure = append(unsure, ns.Name+": "+firstLine(d.err.Error()))
		}
	}
	switch {
	case len(failed) > 0:
		c.Result, c.Details = Fail, failed
		c.Message = fmt.Sprintf("the API server could not call the webhook for %d of %d labelled namespace(s): pod creation fails there", len(failed), len(runs))
		c.Hint = webhookHint(failed, r.o.Namespace)
	case len(notInjected) > 0:
		c.Result, c.Details = Fail, notInjected
		c.Message = "a pod created in a labelled namespace gets no sidecar"
		c.Hint = "the webhook configuration does not select these namespaces or pods: compare it with tether install's (kubectl get mutatingwebhookconfiguration " + webhookName + " -o yaml)"
	case len(unsure) > 0:
		c.Result, c.Details = Fail, unsure
		c.Message = "a dry-run pod could not be created in a labelled namespace"
		c.Hint = "the caller needs create on pods in the labelled namespaces for this check (the pods are server-side dry runs, nothing is stored)"
	default:
		c.Result, c.Details = OK, ok
		c.Message = fmt.Sprintf("the webhook injects a dry-run pod in all %d labelled namespace(s)", len(runs))
	}
	ps := podSecurityCheck(runs, nil, cni)
	ps.Category = catInject
	return c, ps
}

// webhookHint reads the API server's error for the likely cause.
func webhookHint(failed []string, ns string) string {
	all := strings.Join(failed, " ")
	switch {
	case strings.Contains(all, "x509") || strings.Contains(all, "certificate"):
		return fmt.Sprintf("the API server does not trust the injector's certificate: the caBundle is stale or corrupt; kubectl -n %s rollout restart deploy/%s makes the injector rewrite it (see webhook-ca-bundle)", ns, webhookName)
	case strings.Contains(all, "no endpoints available") || strings.Contains(all, "connection refused") || strings.Contains(all, "no such host"):
		return fmt.Sprintf("no injector is serving: see the tether-injector check; kubectl -n %s get pods -l app.kubernetes.io/name=%s", ns, webhookName)
	case strings.Contains(all, "deadline") || strings.Contains(all, "timeout"):
		return fmt.Sprintf("the injector did not answer within the webhook's 5s: a NetworkPolicy or firewall may block the API server from reaching port 9443 of the tether-injector pods in %s", ns)
	default:
		return fmt.Sprintf("see kubectl -n %s logs deploy/%s and the tether-injector check", ns, webhookName)
	}
}
