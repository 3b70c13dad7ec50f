{{/*
tether.namespace is the release namespace. The control plane runs only in
tether-system: tether-ca reserves that namespace's identities, the injector
never injects it, and the sidecars' defaults dial tether-ca and
tether-discovery there. Any other namespace fails the render.
*/}}
{{- define "tether.namespace" -}}
{{- if ne .Release.Namespace "tether-system" -}}
{{- fail (printf "namespace %q: Tether's control plane runs only in tether-system (its binaries and the injector name it); render or install with --namespace tether-system" .Release.Namespace) -}}
{{- end -}}
{{- .Release.Namespace -}}
{{- end -}}

{{/*
tether.image is the one image of every component and of the sidecars:
repository@digest when a digest is set, else repository:tag with the tag
defaulting to the chart's appVersion.
*/}}
{{- define "tether.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/*
tether.podSecurity is the pod and container security context every
control-plane container shares (the restricted Pod Security Standard).
*/}}
{{- define "tether.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "tether.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end -}}

{{/*
tether.spread spreads a component's replicas over nodes; the argument is
the component's name.
*/}}
{{- define "tether.spread" -}}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels: {app.kubernetes.io/name: {{ . }}}
{{- end -}}

{{/* tether.probes are the admin port's readiness and liveness probes. */}}
{{- define "tether.probes" -}}
readinessProbe:
  httpGet: {path: /readyz, port: admin}
  periodSeconds: 5
livenessProbe:
  httpGet: {path: /healthz, port: admin}
  periodSeconds: 10
{{- end -}}

{{/* tether.issuer is the cert-manager issuer as tether-ca's flag names it: Kind/name. */}}
{{- define "tether.issuer" -}}
{{- printf "%s/%s" .Values.certManager.issuer.kind .Values.certManager.issuer.name -}}
{{- end -}}
