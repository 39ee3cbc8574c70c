{{/* Names, labels and shared snippets of the meshlane chart. */}}

{{/* The chart name (nameOverride wins). */}}
{{- define "meshlane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name every resource starts with. */}}
{{- define "meshlane.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart label value: name-version. */}}
{{- define "meshlane.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels that select the agent pods (never change across upgrades). */}}
{{- define "meshlane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshlane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end }}

{{/* The standard labels on every resource. */}}
{{- define "meshlane.labels" -}}
helm.sh/chart: {{ include "meshlane.chart" . }}
app.kubernetes.io/name: {{ include "meshlane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: meshlane
{{- end }}

{{/* The service account the agent runs as. */}}
{{- define "meshlane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "meshlane.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: digest wins over tag; tag defaults to appVersion. */}}
{{- define "meshlane.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Where containers see the node's paths. */}}
{{- define "meshlane.cgroupMount" -}}/host/sys/fs/cgroup{{- end }}
{{- define "meshlane.cniBinMount" -}}/host/opt/cni/bin{{- end }}
{{- define "meshlane.cniConfMount" -}}/host/etc/cni/net.d{{- end }}
{{- define "meshlane.tokenDir" -}}/var/run/secrets/tokens{{- end }}
{{- define "meshlane.rootCaDir" -}}/var/run/secrets/istio{{- end }}

{{/* The admin server's address as the agent config wants it (host:port). */}}
{{- define "meshlane.adminAddr" -}}
{{- if contains ":" .Values.metrics.bindAddress }}
{{- printf "[%s]:%d" .Values.metrics.bindAddress (int .Values.metrics.port) }}
{{- else }}
{{- printf "%s:%d" .Values.metrics.bindAddress (int .Values.metrics.port) }}
{{- end }}
{{- end }}

{{/* The agent's security context: narrowed capabilities, or privileged.
No allowPrivilegeEscalation: false here; with SYS_ADMIN it would protect
nothing (Kubernetes refuses it beside privileged and CAP_SYS_ADMIN). */}}
{{- define "meshlane.securityContext" -}}
{{- if .Values.securityContext.privileged }}
privileged: true
{{- else }}
privileged: false
capabilities:
  drop:
    - ALL
  add:
    {{- toYaml .Values.securityContext.capabilities | nindent 4 }}
seccompProfile:
  type: {{ .Values.securityContext.seccompProfile }}
appArmorProfile:
  type: {{ .Values.securityContext.appArmorProfile }}
{{- end }}
runAsUser: 0
runAsGroup: 0
readOnlyRootFilesystem: true
{{- end }}

{{/* The CNI installer's arguments (without the action flag). */}}
{{- define "meshlane.cniDirArgs" -}}
- --bin-dir
- {{ include "meshlane.cniBinMount" . }}
- --conf-dir
- {{ include "meshlane.cniConfMount" . }}
{{- end }}

{{/* What the CNI installer writes into meshlane's conflist entry. */}}
{{- define "meshlane.cniEntryArgs" -}}
- --pin-root
- {{ .Values.agent.pinRoot }}
- --exclude-namespaces
- {{ join "," .Values.agent.podSource.excludedNamespaces | quote }}
- --agent-timeout-seconds
- {{ .Values.cni.agentTimeoutSeconds | quote }}
{{- end }}

{{/* POD_NAMESPACE from the downward API (the agent's own namespace). */}}
{{- define "meshlane.podNamespaceEnv" -}}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end }}

{{/* The agent's mounts: config, bpffs, cgroup root, API socket dir, netns, istiod auth. */}}
{{- define "meshlane.agentMounts" -}}
- name: config
  mountPath: /etc/meshlane
  readOnly: true
- name: bpffs
  mountPath: /sys/fs/bpf
  mountPropagation: HostToContainer
- name: cgroup
  mountPath: {{ include "meshlane.cgroupMount" . }}
  readOnly: true
- name: run
  mountPath: /run/meshlane
- name: netns
  mountPath: /var/run/netns
  mountPropagation: HostToContainer
  readOnly: true
{{- with include "meshlane.staticDir" . }}
- name: static-pods
  mountPath: {{ . }}
  readOnly: true
{{- end }}
{{- if include "meshlane.xdsEnabled" . }}
- name: istio-token
  mountPath: {{ include "meshlane.tokenDir" . }}
  readOnly: true
- name: istio-root-ca
  mountPath: {{ include "meshlane.rootCaDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* The install init container's mounts: config, bpffs, cgroup root. */}}
{{- define "meshlane.installMounts" -}}
- name: config
  mountPath: /etc/meshlane
  readOnly: true
- name: bpffs
  mountPath: /sys/fs/bpf
  mountPropagation: HostToContainer
- name: cgroup
  mountPath: {{ include "meshlane.cgroupMount" . }}
  readOnly: true
{{- end }}

{{/* The CNI installer's mounts: the node's CNI bin and conf dirs, the API socket dir. */}}
{{- define "meshlane.cniMounts" -}}
- name: cni-bin
  mountPath: {{ include "meshlane.cniBinMount" . }}
- name: cni-conf
  mountPath: {{ include "meshlane.cniConfMount" . }}
{{- end }}

{{/* "true" when the xDS client runs (istio preset, xds enabled), else "". */}}
{{- define "meshlane.xdsEnabled" -}}
{{- if and .Values.agent.xds.enabled (eq .Values.mesh.preset "istio") }}true{{ end }}
{{- end }}

{{/* Bypass on or off; on needs the xDS client (the chart refuses otherwise). */}}
{{- define "meshlane.bypassEnabled" -}}
{{- if .Values.agent.bypass.enabled }}
{{- if not (include "meshlane.xdsEnabled" .) }}
{{- fail "agent.bypass.enabled needs the xDS client: mesh.preset istio and agent.xds.enabled true" }}
{{- end }}
{{- end }}
{{- .Values.agent.bypass.enabled }}
{{- end }}

{{/* podSource kind static: the pod file, which must be an absolute path. */}}
{{- define "meshlane.staticDir" -}}
{{- if eq .Values.agent.podSource.kind "static" }}
{{- $f := required "agent.podSource.staticFile is required with kind static" .Values.agent.podSource.staticFile }}
{{- dir $f }}
{{- end }}
{{- end }}

{{/* The agent's environment: log filter, node name and namespace (downward API). */}}
{{- define "meshlane.agentEnv" -}}
- name: RUST_LOG
  value: {{ .Values.agent.logLevel | quote }}
# The pod source watches this node's pods.
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{ include "meshlane.podNamespaceEnv" . }}
{{- end }}
