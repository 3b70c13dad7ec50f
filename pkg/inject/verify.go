package inject

import (
	"errors"
	"fmt"
	"reflect"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// ErrNotOurInjection is wrapped by the refusal of a pod that carries a
// container named tether-init, tether-validate or tether-sidecar which is not what this
// injector adds: a decoy that would otherwise pass for an injected pod.
var ErrNotOurInjection = errors.New("containers named like Tether's are not what tether-injector adds")

// ErrInjectionRequired is wrapped by the refusal of a pod that opts out
// (or cannot be injected) in a namespace labelled tether.dev/inject=required.
var ErrInjectionRequired = errors.New("the namespace requires injection")

// verifyInjected checks that a pod which carries tether-init,
// tether-validate or tether-sidecar carries exactly what Mutate adds for
// its annotations in this injector's RedirectMode: tether-init (or, in
// RedirectCNI mode, tether-validate and the AnnotationRedirect marker) and
// tether-sidecar as the first two init containers, equal field by field
// (after the API server's defaults) to the ones this injector makes, and
// the volumes they mount. That is what the injector itself recorded in the
// pod; a container name proves nothing. The one part taken from the pod is
// the sidecar's app-probe table, which the injector derived from the app's
// probes before rewriting them.
func (c *Config) verifyInjected(pod *corev1.Pod, o options) error {
	reserved := []string{InitContainerName, ValidateContainerName, SidecarContainerName}
	for _, ct := range pod.Spec.Containers {
		if slices.Contains(reserved, ct.Name) {
			return fmt.Errorf("%w: app container %q: the names %s, %s and %s are reserved for the containers tether-injector adds",
				ErrNotOurInjection, ct.Name, InitContainerName, ValidateContainerName, SidecarContainerName)
		}
	}
	first := c.firstContainer(o).Name
	ic := pod.Spec.InitContainers
	if len(ic) < 2 || ic[0].Name != first || ic[1].Name != SidecarContainerName {
		return fmt.Errorf("%w: init containers %v: tether-injector (redirect mode %s) puts %s and %s first, and nothing else may be named so",
			ErrNotOurInjection, containerNamesOf(ic), c.RedirectMode, first, SidecarContainerName)
	}
	for _, ct := range ic[2:] {
		if slices.Contains(reserved, ct.Name) {
			return fmt.Errorf("%w: a second init container named %s", ErrNotOurInjection, ct.Name)
		}
	}
	if c.RedirectMode == RedirectCNI && pod.Annotations[AnnotationRedirect] != RedirectCNI {
		// Without the marker the CNI plugin leaves the pod alone; the
		// validation would then fail it, but say so here.
		return fmt.Errorf("%w: no annotation %s=%s, which the CNI plugin needs to redirect the pod's traffic",
			ErrNotOurInjection, AnnotationRedirect, RedirectCNI)
	}
	wantInit := c.firstContainer(o)
	wantSide, err := c.sidecarContainer(o, envValue(ic[1].Env, AppProbesEnv))
	if err != nil {
		return err
	}
	for _, pair := range []struct{ got, want corev1.Container }{{ic[0], wantInit}, {ic[1], wantSide}} {
		if field := differingField(normalized(pair.got), normalized(pair.want)); field != "" {
			return fmt.Errorf("%w: %s's %s is not what this injector sets (image %s)", ErrNotOurInjection, pair.want.Name, field, c.Image)
		}
	}
	for _, want := range []corev1.Volume{c.tokenVolume(), bundleVolume(), socketVolume()} {
		got, ok := volume(pod, want.Name)
		if !ok {
			return fmt.Errorf("%w: no volume %s", ErrNotOurInjection, want.Name)
		}
		if cm := got.ConfigMap; cm != nil && want.ConfigMap != nil && want.ConfigMap.DefaultMode == nil {
			want.ConfigMap.DefaultMode = cm.DefaultMode // the API server's default, 0644
		}
		if !equality.Semantic.DeepEqual(got, want) {
			return fmt.Errorf("%w: volume %s is not what this injector sets", ErrNotOurInjection, want.Name)
		}
	}
	return nil
}

// serviceAccountTokenDir is where Kubernetes mounts a pod's API token.
const serviceAccountTokenDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// normalized is c with the fields the API server defaults cleared, so a
// container read back from storage compares equal to a fresh one.
func normalized(c corev1.Container) corev1.Container {
	c = *c.DeepCopy()
	if c.TerminationMessagePath == corev1.TerminationMessagePathDefault {
		c.TerminationMessagePath = ""
	}
	// The ServiceAccount admission plugin, run again after the webhook,
	// mounts the pod's API token into every container, ours included.
	var mounts []corev1.VolumeMount
	for _, m := range c.VolumeMounts {
		if m.MountPath != serviceAccountTokenDir || !m.ReadOnly {
			mounts = append(mounts, m)
		}
	}
	c.VolumeMounts = mounts
	for i := range c.Env {
		if f := c.Env[i].ValueFrom; f != nil && f.FieldRef != nil && f.FieldRef.APIVersion == "v1" {
			f.FieldRef.APIVersion = ""
		}
	}
	return c
}

// differingField names the first field of two containers that differs,
// or "" if none does.
func differingField(got, want corev1.Container) string {
	g, w := reflect.ValueOf(got), reflect.ValueOf(want)
	for i := range g.NumField() {
		if !equality.Semantic.DeepEqual(g.Field(i).Interface(), w.Field(i).Interface()) {
			return g.Type().Field(i).Name
		}
	}
	return ""
}

func envValue(env []corev1.EnvVar, name string) string {
	for _, e := range env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func volume(pod *corev1.Pod, name string) (corev1.Volume, bool) {
	for _, v := range pod.Spec.Volumes {
		if v.Name == name {
			return v, true
		}
	}
	return corev1.Volume{}, false
}

func containerNamesOf(cs []corev1.Container) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Name
	}
	return out
}
