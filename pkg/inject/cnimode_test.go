package inject

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func cniConfig(t testing.TB) Config {
	t.Helper()
	c := DefaultConfig("registry.example/tether:test")
	c.RedirectMode = RedirectCNI
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

// restrictedViolation names the first way sc breaks Pod Security
// "restricted" (container-level fields; the pod sets none), or "".
func restrictedViolation(sc *corev1.SecurityContext) string {
	switch {
	case sc == nil:
		return "no securityContext"
	case sc.Privileged != nil && *sc.Privileged:
		return "privileged"
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		return "allowPrivilegeEscalation not false"
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0:
		return "may run as root"
	case sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL":
		return "does not drop ALL capabilities"
	case len(sc.Capabilities.Add) != 0:
		return "adds capabilities"
	case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		return "no RuntimeDefault seccomp profile"
	}
	return ""
}

// TestCNIModeInjection: in CNI mode every pod of testdata/pods gets
// tether-validate instead of tether-init, the marker annotation, and
// nothing that Pod Security "restricted" refuses; injecting again changes
// nothing.
func TestCNIModeInjection(t *testing.T) {
	cfg := cniConfig(t)
	files, _ := filepath.Glob("testdata/pods/*.yaml")
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			orig := loadPod(t, f)
			res, err := cfg.Mutate(loadPod(t, f), "shop")
			if err != nil {
				t.Fatal(err)
			}
			if res.Skipped != "" {
				t.Skipf("not injected: %s", res.Skipped)
			}
			pod := apply(t, loadPod(t, f), res.Patch)
			ic := pod.Spec.InitContainers
			if len(ic) != len(orig.Spec.InitContainers)+2 || ic[0].Name != ValidateContainerName || ic[1].Name != SidecarContainerName {
				t.Fatalf("init containers %v, want tether-validate, tether-sidecar, then the pod's own", names(ic))
			}
			if hasContainer(pod, InitContainerName) {
				t.Fatal("CNI mode added tether-init")
			}
			if got := pod.Annotations[AnnotationRedirect]; got != RedirectCNI {
				t.Errorf("annotation %s = %q, want %q", AnnotationRedirect, got, RedirectCNI)
			}
			for k, v := range orig.Annotations {
				if pod.Annotations[k] != v {
					t.Errorf("the pod's annotation %s changed: %q", k, pod.Annotations[k])
				}
			}
			for _, c := range ic[:2] {
				if v := restrictedViolation(c.SecurityContext); v != "" {
					t.Errorf("%s breaks Pod Security restricted: %s", c.Name, v)
				}
			}
			v := ic[0]
			if v.RestartPolicy != nil || v.Args[0] != "validate-redirect" || *v.SecurityContext.RunAsUser == ProxyUID {
				t.Errorf("tether-validate %+v: want a plain init container running validate-redirect as a UID the rules capture", v)
			}
			again, err := cfg.Mutate(pod, "shop")
			if err != nil || !again.Patch.Empty() {
				t.Errorf("second injection: patch %v err %v, want nothing", again.Patch, err)
			}
		})
	}
}

// The validator gets the pod's outbound exclusions, so it tests a
// destination the rules capture; inbound exclusions do not concern it.
func TestCNIModeValidatorArgs(t *testing.T) {
	cfg := cniConfig(t)
	pod := apply(t, loadPod(t, "testdata/pods/annotated.yaml"), mustMutate(t, cfg, loadPod(t, "testdata/pods/annotated.yaml")))
	want := "validate-redirect --exclude-outbound-ports 5432 --exclude-outbound-cidrs 10.0.0.0/8,169.254.169.254/32"
	if got := strings.Join(pod.Spec.InitContainers[0].Args, " "); got != want {
		t.Errorf("validator args\n got %s\nwant %s", got, want)
	}
	env := pod.Spec.InitContainers[0].Env
	if len(env) != 1 || env[0].Name != NodeNameEnv || env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("validator env %+v, want %s from spec.nodeName", env, NodeNameEnv)
	}
}

// A pod made in one mode is not taken as injected by an injector in the
// other: each carries what its mode adds and nothing else passes for it.
func TestRedirectModesDoNotMix(t *testing.T) {
	initCfg, cniCfg := testConfig(t), cniConfig(t)
	fresh := func() *corev1.Pod { return loadPod(t, "testdata/pods/minimal.yaml") }
	byInit := apply(t, fresh(), mustMutate(t, initCfg, fresh()))
	byCNI := apply(t, fresh(), mustMutate(t, cniCfg, fresh()))
	tests := []struct {
		name string
		cfg  Config
		pod  *corev1.Pod
		want string
	}{
		{"init-mode pod under a CNI-mode injector", cniCfg, byInit, "puts tether-validate and tether-sidecar first"},
		{"CNI-mode pod under an init-mode injector", initCfg, byCNI, "puts tether-init and tether-sidecar first"},
		{"CNI-mode pod without its marker", cniCfg, func() *corev1.Pod {
			p := byCNI.DeepCopy()
			delete(p.Annotations, AnnotationRedirect)
			return p
		}(), "no annotation " + AnnotationRedirect},
		{"CNI-mode pod whose validator checks nothing", cniCfg, func() *corev1.Pod {
			p := byCNI.DeepCopy()
			p.Spec.InitContainers[0].Args = []string{"validate-redirect", "--exclude-outbound-cidrs", "0.0.0.0/0"}
			return p
		}(), "tether-validate's Args"},
		{"CNI-mode pod whose validator runs as the sidecar", cniCfg, func() *corev1.Pod {
			p := byCNI.DeepCopy()
			p.Spec.InitContainers[0].SecurityContext.RunAsUser = ptr(int64(ProxyUID))
			return p
		}(), "tether-validate's SecurityContext"},
		{"app container named tether-validate", cniCfg, func() *corev1.Pod {
			p := fresh()
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: ValidateContainerName, Image: "busybox"})
			return p
		}(), "reserved"},
		{"a decoy tether-validate alone", cniCfg, func() *corev1.Pod {
			p := fresh()
			p.Spec.InitContainers = []corev1.Container{{Name: ValidateContainerName, Image: "busybox", Command: []string{"true"}}}
			return p
		}(), "first"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := tt.cfg.Mutate(tt.pod, "shop")
			if !errors.Is(err, ErrNotOurInjection) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Mutate = %+v, %v; want a refusal (ErrNotOurInjection) saying %q", res, err, tt.want)
			}
		})
	}
}

// The marker is the injector's: a pod may not set another value, and in
// CNI mode a pod's own value is replaced by the injector's.
func TestRedirectAnnotation(t *testing.T) {
	p := loadPod(t, "testdata/pods/minimal.yaml")
	p.Annotations = map[string]string{AnnotationRedirect: "none"}
	cni := cniConfig(t)
	if _, err := cni.Mutate(p, "shop"); !errors.Is(err, ErrInvalidAnnotation) || !strings.Contains(err.Error(), AnnotationRedirect) {
		t.Fatalf("Mutate with %s=none: %v, want a refusal naming it", AnnotationRedirect, err)
	}
	// In init mode a pod that asks for CNI redirection still gets
	// tether-init: the mode is the cluster's, not the pod's.
	p.Annotations = map[string]string{AnnotationRedirect: RedirectCNI}
	cfg := testConfig(t)
	got := apply(t, p.DeepCopy(), mustMutate(t, cfg, p.DeepCopy()))
	if got.Spec.InitContainers[0].Name != InitContainerName {
		t.Fatalf("init mode, pod annotated %s=cni: init containers %v, want tether-init first", AnnotationRedirect, names(got.Spec.InitContainers))
	}
}

func TestConfigRedirectMode(t *testing.T) {
	c := DefaultConfig("tether:test")
	c.RedirectMode = ""
	if err := c.Validate(); err != nil || c.RedirectMode != RedirectInit {
		t.Fatalf("empty mode: %v, %q; want the default %q", err, c.RedirectMode, RedirectInit)
	}
	c.RedirectMode = "ebpf"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--redirect-mode") {
		t.Fatalf("mode ebpf: %v, want an error naming --redirect-mode", err)
	}
}
