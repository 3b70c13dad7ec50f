package inject

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestDecoySidecarIsRefused: a pod that brings its own container named
// tether-sidecar (or tether-init) is not taken as injected; it is refused
// with a message saying why, wherever the decoy sits.
func TestDecoySidecarIsRefused(t *testing.T) {
	cfg := testConfig(t)
	decoy := corev1.Container{Name: SidecarContainerName, Image: "busybox", Command: []string{"sleep", "infinity"}}
	injected := func() *corev1.Pod {
		p := loadPod(t, "testdata/pods/minimal.yaml")
		return apply(t, p, mustMutate(t, cfg, p))
	}
	tests := []struct {
		name string
		mod  func(*corev1.Pod)
		want string
	}{
		{"app container named tether-sidecar", func(p *corev1.Pod) { p.Spec.Containers = append(p.Spec.Containers, decoy) }, "reserved"},
		{"init container named tether-sidecar", func(p *corev1.Pod) { p.Spec.InitContainers = []corev1.Container{decoy} }, "first"},
		{"tether-init and a decoy sidecar", func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{cfg.initContainer(options{inboundMode: "strict", outboundMode: "passthrough"}), decoy}
		}, "tether-sidecar's"},
		{"injected, then the sidecar's image swapped", func(p *corev1.Pod) {
			*p = *injected()
			p.Spec.InitContainers[1].Image = "busybox"
		}, "tether-sidecar's Image"},
		{"injected, then capture turned off", func(p *corev1.Pod) {
			*p = *injected()
			p.Spec.InitContainers[0].Args = append(p.Spec.InitContainers[0].Args, "--exclude-inbound-ports", "8080")
		}, "tether-init's Args"},
		{"injected, then the sidecar's mode changed", func(p *corev1.Pod) {
			*p = *injected()
			p.Spec.InitContainers[1].Args = []string{"--inbound-mode", "permissive"}
		}, "tether-sidecar's Args"},
		{"injected, then the token volume replaced", func(p *corev1.Pod) {
			*p = *injected()
			for i := range p.Spec.Volumes {
				if p.Spec.Volumes[i].Name == TokenVolume {
					p.Spec.Volumes[i].VolumeSource = corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}
				}
			}
		}, "volume " + TokenVolume},
		{"injected, then an app init container runs before capture", func(p *corev1.Pod) {
			*p = *injected()
			p.Spec.InitContainers = append([]corev1.Container{{Name: "early", Image: "busybox"}}, p.Spec.InitContainers...)
		}, "first"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := loadPod(t, "testdata/pods/minimal.yaml")
			tt.mod(p)
			res, err := cfg.Mutate(p, "shop")
			if !errors.Is(err, ErrNotOurInjection) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Mutate = %+v, %v; want a refusal (ErrNotOurInjection) saying %q", res, err, tt.want)
			}
		})
	}
	// What the injector made passes, and is left as it is.
	res, err := cfg.Mutate(injected(), "shop")
	if err != nil || !res.Patch.Empty() || res.Skipped != "already injected (verified)" {
		t.Fatalf("an injected pod again: %+v, %v", res, err)
	}
}

// TestRequiredNamespaceRefusesOptOut: in a namespace labelled
// tether.dev/inject=required the opt-out label and hostNetwork are
// refused, and a decoy too; other pods are injected as usual.
func TestRequiredNamespaceRefusesOptOut(t *testing.T) {
	cfg := testConfig(t)
	for _, tt := range []struct {
		name string
		mod  func(*corev1.Pod)
		want error
		msg  string
	}{
		{"opt-out label", func(p *corev1.Pod) { p.Labels = map[string]string{InjectLabel: "disabled"} }, ErrInjectionRequired, "opt-out label tether.dev/inject=disabled is refused"},
		{"hostNetwork", func(p *corev1.Pod) { p.Spec.HostNetwork = true }, ErrInjectionRequired, "hostNetwork"},
		{"decoy", func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: SidecarContainerName, Image: "busybox"}}
		}, ErrNotOurInjection, "nothing else may be named so"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := loadPod(t, "testdata/pods/minimal.yaml")
			tt.mod(p)
			res, err := cfg.MutateRequired(p, "shop")
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("MutateRequired = %+v, %v; want %v saying %q", res, err, tt.want, tt.msg)
			}
		})
	}
	p := loadPod(t, "testdata/pods/minimal.yaml")
	if res, err := cfg.MutateRequired(p, "shop"); err != nil || res.Patch.Empty() {
		t.Fatalf("a plain pod in a required namespace: %+v, %v; want it injected", res, err)
	}
	// The control plane's namespaces are never injected, required or not.
	if res, err := cfg.MutateRequired(p, "kube-system"); err != nil || !res.Patch.Empty() {
		t.Fatalf("kube-system: %+v, %v", res, err)
	}
}
