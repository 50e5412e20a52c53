{{/* Names and labels. */}}
{{- define "synthray.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "synthray.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "synthray.labels" -}}
{{ include "synthray.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Images. */}}
{{- define "synthray.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "synthray.gpuImage" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.gpuTag | default (printf "%s-gpu" .Chart.AppVersion)) -}}
{{- end -}}

{{/* Secret names (existing or created by this chart). */}}
{{- define "synthray.s3Secret" -}}
{{- .Values.objectStore.existingSecret | default (printf "%s-s3" (include "synthray.fullname" .)) -}}
{{- end -}}

{{- define "synthray.apiKeySecret" -}}
{{- .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "synthray.fullname" .)) -}}
{{- end -}}

{{- define "synthray.s3Endpoint" -}}
{{- if .Values.objectStore.bundled.enabled -}}
{{- printf "http://%s-s3:8333" (include "synthray.fullname" .) -}}
{{- else -}}
{{- .Values.objectStore.endpointUrl -}}
{{- end -}}
{{- end -}}

{{- define "synthray.mlflowUri" -}}
{{- printf "http://%s-mlflow:%d" (include "synthray.fullname" .) (int .Values.mlflow.port) -}}
{{- end -}}

{{/* SYNTHRAY_* settings (infra/settings.py) of every synthray container. */}}
{{- define "synthray.env" -}}
- name: SYNTHRAY_RAY_ADDRESS
  value: auto
- name: SYNTHRAY_STATE_DIR
  value: /home/ray/.synthray
- name: SYNTHRAY_MLFLOW_TRACKING_URI
  value: {{ include "synthray.mlflowUri" . | quote }}
- name: SYNTHRAY_S3_ENDPOINT_URL
  value: {{ include "synthray.s3Endpoint" . | quote }}
- name: SYNTHRAY_S3_REGION
  value: {{ .Values.objectStore.region | quote }}
- name: SYNTHRAY_BUCKET
  value: {{ .Values.objectStore.bucket | quote }}
- name: SYNTHRAY_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "synthray.s3Secret" . }}, key: access-key}
- name: SYNTHRAY_S3_SECRET_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "synthray.s3Secret" . }}, key: secret-key}
- name: SYNTHRAY_API_KEY_FILE
  value: /etc/synthray/api-keys/api-keys
- name: SYNTHRAY_REGISTRY_POLL_S
  value: {{ .Values.serve.registryPollSeconds | quote }}
- name: SYNTHRAY_SERVE_MAX_BODY_BYTES
  value: {{ .Values.serve.maxBodyBytes | int64 | quote }}
- name: SYNTHRAY_BATCH_SHARD_SIZE
  value: {{ .Values.serve.batchShardSize | int64 | quote }}
- name: SYNTHRAY_BATCH_MAX_IMAGES
  value: {{ .Values.serve.batchMaxImages | int64 | quote }}
- name: SYNTHRAY_LOG_FORMAT
  value: {{ .Values.serve.logFormat | quote }}
- name: RAY_SERVE_LOG_ENCODING
  value: {{ .Values.serve.logFormat | upper | quote }}
{{- /* Serve's request fast path, as infra/stack.py SERVE_FAST_PATH_ENV (docs/benchmarks.md) */}}
- name: RAY_SERVE_PROXY_USE_GRPC
  value: "1"
- name: RAY_SERVE_USE_GRPC_BY_DEFAULT
  value: "1"
- name: RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD
  value: "0"
- name: RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP
  value: "0"
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "synthray.volumes" -}}
- name: api-keys
  secret:
    secretName: {{ include "synthray.apiKeySecret" . }}
- name: state
  emptyDir: {}
{{- end -}}

{{- define "synthray.volumeMounts" -}}
- name: api-keys
  mountPath: /etc/synthray/api-keys
  readOnly: true
- name: state
  mountPath: /home/ray/.synthray
{{- end -}}

{{- define "synthray.securityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 100
fsGroup: 100
{{- end -}}

{{/*
A Ray container. Arguments: dict "root" (the top context), "name", "image", "resources",
"gpus" (0 = none), "ports" (list of {name, containerPort}), "probes" (bool: Serve health).
*/}}
{{- define "synthray.rayContainer" -}}
{{- $root := .root -}}
- name: {{ .name }}
  image: {{ .image }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  env:
    {{- include "synthray.env" $root | nindent 4 }}
  {{- with .ports }}
  ports:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  resources:
    {{- $resources := deepCopy .resources -}}
    {{- if gt (int .gpus) 0 -}}
    {{- $_ := set $resources.limits "nvidia.com/gpu" (int .gpus) -}}
    {{- $_ := set $resources.requests "nvidia.com/gpu" (int .gpus) -}}
    {{- end }}
    {{- toYaml $resources | nindent 4 }}
  {{- if .probes }}
  readinessProbe:
    httpGet: {path: /readyz, port: {{ $root.Values.serve.port }}}
    initialDelaySeconds: 30
    periodSeconds: 10
    failureThreshold: 6
  livenessProbe:
    httpGet: {path: /healthz, port: {{ $root.Values.serve.port }}}
    initialDelaySeconds: 120
    periodSeconds: 20
    failureThreshold: 6
  {{- end }}
  volumeMounts:
    {{- include "synthray.volumeMounts" $root | nindent 4 }}
  securityContext:
    allowPrivilegeEscalation: false
{{- end -}}

{{/* Worker group specs of a Ray cluster. Argument: dict "root", "gpuOnly" (RayJob with useGpu). */}}
{{- define "synthray.workerGroups" -}}
{{- $root := .root -}}
{{- $v := $root.Values.ray -}}
{{- if and $v.cpuWorkers.enabled (not .gpuOnly) }}
- groupName: cpu
  replicas: {{ $v.cpuWorkers.replicas }}
  minReplicas: {{ $v.cpuWorkers.minReplicas }}
  maxReplicas: {{ $v.cpuWorkers.maxReplicas }}
  rayStartParams: {}
  template:
    spec:
      securityContext:
        {{- include "synthray.securityContext" $root | nindent 8 }}
      {{- with $root.Values.image.pullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      {{- with $v.cpuWorkers.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.cpuWorkers.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        {{- include "synthray.rayContainer" (dict "root" $root "name" "ray-worker" "image" (include "synthray.image" $root) "resources" $v.cpuWorkers.resources "gpus" 0) | nindent 8 }}
      volumes:
        {{- include "synthray.volumes" $root | nindent 8 }}
{{- end }}
{{- if or $v.gpuWorkers.enabled .gpuOnly }}
- groupName: gpu
  replicas: {{ $v.gpuWorkers.replicas }}
  minReplicas: {{ $v.gpuWorkers.minReplicas }}
  maxReplicas: {{ $v.gpuWorkers.maxReplicas }}
  rayStartParams:
    num-gpus: {{ $v.gpuWorkers.gpusPerWorker | quote }}
  template:
    spec:
      securityContext:
        {{- include "synthray.securityContext" $root | nindent 8 }}
      {{- with $root.Values.image.pullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      {{- with $v.gpuWorkers.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.gpuWorkers.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        {{- include "synthray.rayContainer" (dict "root" $root "name" "ray-worker" "image" (include "synthray.gpuImage" $root) "resources" $v.gpuWorkers.resources "gpus" $v.gpuWorkers.gpusPerWorker) | nindent 8 }}
      volumes:
        {{- include "synthray.volumes" $root | nindent 8 }}
{{- end }}
{{- end -}}

{{/* The head group spec. Argument: dict "root", "serve" (bool: Serve port and probes). */}}
{{- define "synthray.headGroup" -}}
{{- $root := .root -}}
{{- $ports := list (dict "name" "gcs" "containerPort" 6379) (dict "name" "dashboard" "containerPort" 8265) (dict "name" "client" "containerPort" 10001) -}}
{{- if .serve -}}
{{- $ports = append $ports (dict "name" "serve" "containerPort" (int $root.Values.serve.port)) -}}
{{- end -}}
rayStartParams:
  {{- toYaml $root.Values.ray.head.rayStartParams | nindent 2 }}
template:
  spec:
    securityContext:
      {{- include "synthray.securityContext" $root | nindent 6 }}
    {{- with $root.Values.image.pullSecrets }}
    imagePullSecrets:
      {{- range . }}
      - name: {{ . }}
      {{- end }}
    {{- end }}
    containers:
      {{- include "synthray.rayContainer" (dict "root" $root "name" "ray-head" "image" (include "synthray.image" $root) "resources" $root.Values.ray.head.resources "gpus" 0 "ports" $ports "probes" .serve) | nindent 6 }}
    volumes:
      {{- include "synthray.volumes" $root | nindent 6 }}
{{- end -}}
