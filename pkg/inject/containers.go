package inject

import (
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func ptr[T any](v T) *T { return &v }

func (c *Config) tokenVolume() corev1.Volume {
	return corev1.Volume{Name: TokenVolume, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		// Only the sidecar mounts this volume; 0444 lets it read the
		// token whatever the pod's fsGroup.
		DefaultMode: ptr(int32(0o444)),
		Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
			Audience:          TokenAud,
			ExpirationSeconds: ptr(int64(TokenSeconds)),
			Path:              TokenFile,
		}}},
	}}}
}

func bundleVolume() corev1.Volume {
	return corev1.Volume{Name: BundleVolume, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: BundleConfig},
	}}}
}

func socketVolume() corev1.Volume {
	return corev1.Volume{Name: SocketVolume, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
		Medium: corev1.StorageMediumMemory, SizeLimit: ptr(resource.MustParse("1Mi")),
	}}}
}

// firstContainer is the init container that goes before the sidecar:
// tether-init, or tether-validate in RedirectCNI mode.
func (c *Config) firstContainer(o options) corev1.Container {
	if c.RedirectMode == RedirectCNI {
		return c.validateContainer(o)
	}
	return c.initContainer(o)
}

// restrictedContext is the securityContext of an unprivileged injected
// container, as Pod Security "restricted" requires: a non-root UID, no
// privilege escalation, every capability dropped, the runtime's default
// seccomp profile, and a read-only root filesystem.
func restrictedContext(uid int64) *corev1.SecurityContext {
	return &corev1.SecurityContext{
		RunAsUser:                ptr(uid),
		RunAsGroup:               ptr(uid),
		RunAsNonRoot:             ptr(true),
		Privileged:               ptr(false),
		AllowPrivilegeEscalation: ptr(false),
		ReadOnlyRootFilesystem:   ptr(true),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

// validateContainer runs `tether-sidecar validate-redirect` in
// RedirectCNI mode: without privileges, as ValidatorUID (whose traffic the
// rules capture), it checks that an outbound connection reaches the
// sidecar's capture port, and fails the pod when the CNI plugin did not
// set the redirection up. It gets the outbound exclusions so that it tests
// a destination the rules capture.
func (c *Config) validateContainer(o options) corev1.Container {
	args := []string{"validate-redirect"}
	if o.excludeOutbound != "" {
		args = append(args, "--exclude-outbound-ports", o.excludeOutbound)
	}
	if o.excludeCIDRs != "" {
		args = append(args, "--exclude-outbound-cidrs", o.excludeCIDRs)
	}
	return corev1.Container{
		Name:            ValidateContainerName,
		Image:           c.Image,
		ImagePullPolicy: c.ImagePullPolicy,
		Command:         []string{"tether-sidecar"},
		Args:            args,
		Env: []corev1.EnvVar{{Name: NodeNameEnv, ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}}},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("16Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
		},
		SecurityContext:          restrictedContext(ValidatorUID),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

// initContainer runs `tether-sidecar init`. It is the one container that
// needs privileges: root with NET_ADMIN and NET_RAW, because iptables runs
// as a child process and Kubernetes gives no ambient capabilities to a
// non-root user. Its root filesystem stays writable for the iptables lock
// file (/run/xtables.lock).
func (c *Config) initContainer(o options) corev1.Container {
	args := []string{"init"}
	if c.DiscoveryAddr != DiscoveryOff {
		// The sidecar answers DNS from discovery data on :15053.
		args = append(args, "--capture-dns")
	}
	if o.outboundMode == "registry-only" {
		// The sidecar proxies TCP only: init rejects the app's other UDP.
		args = append(args, "--outbound-mode", o.outboundMode)
	}
	if o.excludeInbound != "" {
		args = append(args, "--exclude-inbound-ports", o.excludeInbound)
	}
	if o.excludeOutbound != "" {
		args = append(args, "--exclude-outbound-ports", o.excludeOutbound)
	}
	if o.excludeCIDRs != "" {
		args = append(args, "--exclude-outbound-cidrs", o.excludeCIDRs)
	}
	return corev1.Container{
		Name:            InitContainerName,
		Image:           c.Image,
		ImagePullPolicy: c.ImagePullPolicy,
		Command:         []string{"tether-sidecar"},
		Args:            args,
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("16Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
		},
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr(int64(0)),
			RunAsGroup:               ptr(int64(0)),
			RunAsNonRoot:             ptr(false),
			Privileged:               ptr(false),
			AllowPrivilegeEscalation: ptr(false),
			ReadOnlyRootFilesystem:   ptr(false),
			Capabilities: &corev1.Capabilities{
				Add:  []corev1.Capability{"NET_ADMIN", "NET_RAW"},
				Drop: []corev1.Capability{"ALL"},
			},
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

// sidecarContainer is tether-sidecar as a native sidecar: an init
// container with restartPolicy Always. Its startup probe holds the app
// containers back until the sidecar has its SVID.
func (c *Config) sidecarContainer(o options, appProbes string) (corev1.Container, error) {
	cpu, mem := c.ProxyCPU, c.ProxyMemory
	if o.cpu != nil {
		cpu = *o.cpu
	}
	if o.memory != nil {
		mem = *o.memory
	}
	args := []string{
		"--transparent",
		"--ca", c.CAAddr,
		"--trust-domain", c.TrustDomain,
		"--token-file", TokenPath,
		"--bundle", BundleDir + "/bundle.pem",
		"--workload-socket", SocketPath,
		// The pod's emptyDir is the boundary: the app containers, whatever
		// their UIDs, and nothing outside the pod.
		"--workload-socket-mode", "0666",
		"--admin-listen", ":" + strconv.Itoa(AdminPort),
		"--inbound-mode", o.inboundMode,
		"--outbound-mode", o.outboundMode,
		"--log-level", c.LogLevel,
		"--log-format", "json",
	}
	if c.DiscoveryAddr != DiscoveryOff {
		args = append(args, "--discovery", c.DiscoveryAddr)
	}
	if o.localhostPorts != "" {
		args = append(args, "--localhost-inbound-ports", o.localhostPorts)
	}
	var env []corev1.EnvVar
	if appProbes != "" {
		env = append(env, corev1.EnvVar{Name: AppProbesEnv, Value: appProbes},
			corev1.EnvVar{Name: PodIPEnv, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}})
	}
	admin := func(path string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromInt32(AdminPort), Scheme: corev1.URISchemeHTTP,
			}},
			PeriodSeconds: period, FailureThreshold: failures, TimeoutSeconds: 1, SuccessThreshold: 1,
		}
	}
	return corev1.Container{
		Name:            SidecarContainerName,
		Image:           c.Image,
		ImagePullPolicy: c.ImagePullPolicy,
		Command:         []string{"tether-sidecar"},
		Args:            args,
		Env:             env,
		RestartPolicy:   ptr(corev1.ContainerRestartPolicyAlways),
		Ports:           []corev1.ContainerPort{{Name: "tether-admin", ContainerPort: AdminPort, Protocol: corev1.ProtocolTCP}},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: cpu, corev1.ResourceMemory: mem},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: mem},
		},
		VolumeMounts: []corev1.VolumeMount{
			{Name: TokenVolume, MountPath: TokenDir, ReadOnly: true},
			{Name: BundleVolume, MountPath: BundleDir, ReadOnly: true},
			{Name: SocketVolume, MountPath: SocketDir},
		},
		// Up to 2 minutes to get the first SVID before the kubelet
		// restarts the sidecar.
		StartupProbe:             admin("/healthz/ready", 1, 120),
		ReadinessProbe:           admin("/healthz/ready", 2, 3),
		LivenessProbe:            admin("/healthz/live", 10, 3),
		SecurityContext:          restrictedContext(ProxyUID),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}, nil
}
