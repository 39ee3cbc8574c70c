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

{{/* The container security context (narrowed capabilities, or privileged). */}}
{{- define "meshlane.securityContext" -}}
{{- if .Values.securityContext.privileged }}
privileged: true
{{- else }}
privileged: false
allowPrivilegeEscalation: false
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
{{- if .Values.agent.xds.enabled }}
- name: istio-token
  mountPath: {{ include "meshlane.tokenDir" . }}
  readOnly: true
- name: istio-root-ca
  mountPath: {{ include "meshlane.rootCaDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* The CNI installer's mounts: the node's CNI bin and conf dirs, the API socket dir. */}}
{{- define "meshlane.cniMounts" -}}
- name: cni-bin
  mountPath: {{ include "meshlane.cniBinMount" . }}
- name: cni-conf
  mountPath: {{ include "meshlane.cniConfMount" . }}
{{- end }}
