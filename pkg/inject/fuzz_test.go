package inject

import (
	"encoding/json"
	"errors"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
)

// FuzzReview feeds arbitrary bodies to the AdmissionReview decoder: it must
// never panic, must answer either ErrBadReview or a well-formed response
// for the request's uid, and any patch it returns must apply to the pod it
// was made for, as the API server encodes it.
func FuzzReview(f *testing.F) {
	for _, name := range []string{"minimal", "probes", "annotated", "initcontainers"} {
		f.Add(review(f, loadPod(f, "testdata/pods/"+name+".yaml"), "shop", nil))
	}
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","resource":{"version":"v1","resource":"pods"},"operation":"CREATE","object":{"spec":{"hostNetwork":true}}}}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","resource":{"version":"v1","resource":"pods"},"operation":"CREATE","object":{"metadata":{"annotations":{"tether.dev/exclude-outbound-cidrs":"::/0"}},"spec":{"containers":[{"name":"a","readinessProbe":{"httpGet":{"port":"x"}}}]}}}}`))
	f.Add([]byte(`null`))
	w, _ := newWebhook(f, 0)
	f.Fuzz(func(t *testing.T, body []byte) {
		out, _, err := w.Review(body)
		if err != nil {
			if !errors.Is(err, ErrBadReview) {
				t.Fatalf("error %v does not wrap ErrBadReview", err)
			}
			return
		}
		var in, resp admissionv1.AdmissionReview
		if err := json.Unmarshal(body, &in); err != nil {
			t.Fatalf("accepted a body that does not decode: %v", err)
		}
		if err := json.Unmarshal(out, &resp); err != nil || resp.Response == nil {
			t.Fatalf("response %s does not decode: %v", out, err)
		}
		if resp.Response.UID != in.Request.UID {
			t.Fatalf("response uid %q, request uid %q", resp.Response.UID, in.Request.UID)
		}
		if len(resp.Response.Patch) == 0 {
			return
		}
		p, err := jsonpatch.DecodePatch(resp.Response.Patch)
		if err != nil {
			t.Fatalf("patch does not decode: %v", err)
		}
		// The API server sends the pod in its canonical encoding (every
		// key present, exact case): the patch must apply to that.
		var pod corev1.Pod
		if err := json.Unmarshal(in.Request.Object.Raw, &pod); err != nil {
			t.Fatalf("patched a pod that does not decode: %v", err)
		}
		canonical, _ := json.Marshal(&pod)
		if _, err := p.Apply(canonical); err != nil {
			t.Fatalf("patch does not apply to the pod: %v\npod %s\npatch %s", err, canonical, resp.Response.Patch)
		}
	})
}
