{{/* Names and labels. */}}
{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sluice.fullname" -}}
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

{{- define "sluice.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sluice.labels" -}}
helm.sh/chart: {{ include "sluice.chart" . }}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sluice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository[:tag][@digest] */}}
{{- define "sluice.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "sluice.redisImage" -}}
{{- $i := .Values.redis.internal.image }}
{{- if $i.digest }}
{{- printf "%s@%s" $i.repository $i.digest }}
{{- else }}
{{- printf "%s:%s" $i.repository $i.tag }}
{{- end }}
{{- end }}

{{- define "sluice.redisName" -}}
{{- printf "%s-redis" (include "sluice.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sluice.workerName" -}}
{{- printf "%s-worker" (include "sluice.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Is a Redis queue configured? "true" or "". */}}
{{- define "sluice.hasQueue" -}}
{{- if or .Values.redis.internal.enabled .Values.redis.url .Values.redis.urlSecret.name }}true{{ end }}
{{- end }}

{{/* Checks across values that the schema cannot express. Included by every workload. */}}
{{- define "sluice.validate" -}}
{{- $r := .Values.modelRepository }}
{{- if and (eq $r.type "s3") (not (hasPrefix "s3://" $r.s3.url)) }}
{{- fail "modelRepository.type is s3: set modelRepository.s3.url to s3://bucket/prefix" }}
{{- end }}
{{- if and (eq $r.type "volume") (not $r.volume.source) }}
{{- fail "modelRepository.type is volume: set modelRepository.volume.source to a pod volume source (e.g. persistentVolumeClaim: {claimName: models, readOnly: true})" }}
{{- end }}
{{- if and (eq .Values.modelControl.mode "explicit") (not .Values.modelControl.loadModels) }}
{{- fail "modelControl.mode is explicit: list the models to load at start in modelControl.loadModels" }}
{{- end }}
{{- if and .Values.workers.enabled (not (include "sluice.hasQueue" .)) }}
{{- fail "workers.enabled needs a Redis queue: set redis.url, redis.urlSecret.name or redis.internal.enabled" }}
{{- end }}
{{- if and .Values.workers.keda.enabled (not .Values.workers.enabled) }}
{{- fail "workers.keda.enabled scales the worker Deployment: set workers.enabled too" }}
{{- end }}
{{- if and .Values.redis.internal.enabled (or .Values.redis.url .Values.redis.urlSecret.name) }}
{{- fail "redis.internal.enabled and redis.url/urlSecret are exclusive: use one Redis" }}
{{- end }}
{{- if and .Values.dataVolume.existingClaim (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) }}
{{- fail "dataVolume.existingClaim holds one server's embedded stores: use it with replicaCount 1 and no autoscaling (use Redis for several replicas)" }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (kindIs "invalid" $pdb.maxUnavailable) (kindIs "invalid" $pdb.minAvailable) }}
{{- fail "podDisruptionBudget: set maxUnavailable or minAvailable" }}
{{- end }}
{{- $s := .Values.shutdown }}
{{- $needed := add $s.preStopSleepSeconds (int (ceil $s.drainDelaySeconds)) $s.gracePeriodSeconds }}
{{- if and $s.terminationGracePeriodSeconds (le (int $s.terminationGracePeriodSeconds) (int $needed)) }}
{{- fail (printf "shutdown.terminationGracePeriodSeconds (%v) must be above preStopSleepSeconds + drainDelaySeconds + gracePeriodSeconds (%v), or the kubelet kills requests still in flight" $s.terminationGracePeriodSeconds $needed) }}
{{- end }}
{{- if and .Values.workers.terminationGracePeriodSeconds (le (int .Values.workers.terminationGracePeriodSeconds) (int .Values.workers.gracePeriodSeconds)) }}
{{- fail "workers.terminationGracePeriodSeconds must be above workers.gracePeriodSeconds" }}
{{- end }}
{{- end }}

{{/* terminationGracePeriodSeconds of the server pods. */}}
{{- define "sluice.terminationGracePeriod" -}}
{{- $s := .Values.shutdown }}
{{- if $s.terminationGracePeriodSeconds }}
{{- int $s.terminationGracePeriodSeconds }}
{{- else }}
{{- add $s.preStopSleepSeconds (int (ceil $s.drainDelaySeconds)) $s.gracePeriodSeconds 10 }}
{{- end }}
{{- end }}

{{/* The --model-repository value of the main repository. */}}
{{- define "sluice.repositoryLocation" -}}
{{- $r := .Values.modelRepository }}
{{- if eq $r.type "s3" }}
{{- $r.s3.url }}
{{- else if eq $r.type "volume" }}
{{- if $r.volume.subPath }}
{{- printf "%s/%s" (trimSuffix "/" $r.volume.mountPath) $r.volume.subPath }}
{{- else }}
{{- $r.volume.mountPath }}
{{- end }}
{{- else }}
{{- $r.image.path }}
{{- end }}
{{- end }}

{{/* Flags shared by serve and worker: repositories, control mode, models, logs. */}}
{{- define "sluice.engineArgs" -}}
- --model-repository
- {{ include "sluice.repositoryLocation" . | quote }}
{{- range .Values.modelRepository.additional }}
- --model-repository
- {{ . | quote }}
{{- end }}
- --model-control-mode
- {{ .Values.modelControl.mode }}
{{- if eq .Values.modelControl.mode "poll" }}
- --repository-poll-secs
- {{ .Values.modelControl.pollSeconds | quote }}
{{- end }}
{{- range .Values.modelControl.loadModels }}
- --load-model
- {{ . | quote }}
{{- end }}
- --max-queue-size
- {{ .Values.server.maxQueueSize | quote }}
{{- range .Values.jobs.webhookAllow }}
- --webhook-allow
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* Environment shared by serve and worker. */}}
{{- define "sluice.env" -}}
- name: SLUICE_LOG_FORMAT
  value: {{ .Values.server.logFormat | quote }}
- name: SLUICE_LOG
  value: {{ .Values.server.logLevel | quote }}
- name: SLUICE_HOME
  value: /var/lib/sluice
{{- if .Values.redis.internal.enabled }}
- name: SLUICE_QUEUE
  value: {{ printf "redis://%s:6379/0" (include "sluice.redisName" .) | quote }}
{{- else if .Values.redis.urlSecret.name }}
- name: SLUICE_QUEUE
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.urlSecret.name }}
      key: {{ .Values.redis.urlSecret.key }}
{{- else if .Values.redis.url }}
- name: SLUICE_QUEUE
  value: {{ .Values.redis.url | quote }}
{{- end }}
{{- if .Values.redis.stateUrl }}
- name: SLUICE_STATE
  value: {{ .Values.redis.stateUrl | quote }}
{{- end }}
{{- if .Values.jobs.webhookSecret.name }}
- name: SLUICE_WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.jobs.webhookSecret.name }}
      key: {{ .Values.jobs.webhookSecret.key }}
{{- end }}
{{- $r := .Values.modelRepository }}
{{- if eq $r.type "s3" }}
{{- if $r.s3.region }}
- name: AWS_REGION
  value: {{ $r.s3.region | quote }}
{{- end }}
{{- if $r.s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ $r.s3.endpoint | quote }}
{{- end }}
{{- if $r.s3.allowHttp }}
- name: AWS_ALLOW_HTTP
  value: "true"
{{- end }}
{{- with $r.s3.credentialsSecret }}
{{- if .name }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .secretAccessKeyKey }}
{{- if .sessionTokenKey }}
- name: AWS_SESSION_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .sessionTokenKey }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volumes shared by serve and worker. */}}
{{- define "sluice.volumes" -}}
- name: data
{{- if .Values.dataVolume.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.dataVolume.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.dataVolume.sizeLimit }}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- if eq .Values.modelRepository.type "volume" }}
- name: models
{{ toYaml .Values.modelRepository.volume.source | indent 2 }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "sluice.volumeMounts" -}}
- name: data
  mountPath: /var/lib/sluice
- name: tmp
  mountPath: /tmp
{{- if eq .Values.modelRepository.type "volume" }}
- name: models
  mountPath: {{ .Values.modelRepository.volume.mountPath }}
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* resources with the GPU added to the limits (and requests: extended resources need both equal or requests left out). */}}
{{- define "sluice.resources" -}}
{{- $res := deepCopy (.resources | default dict) }}
{{- if .gpu.enabled }}
{{- $limits := get $res "limits" | default dict }}
{{- $_ := set $limits .gpu.resourceName (int .gpu.count) }}
{{- $_ := set $res "limits" $limits }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/*
The prometheus-adapter rule: average queue time per request of each pod, in microseconds, as
NVIDIA's Triton chart derives it (the rate of the cumulative queue time over the rate of
successful requests). The clamp gives an idle pod 0 instead of 0/0 = NaN, which the adapter
cannot serve (the HPA would then stop scaling down).
*/}}
{{- define "sluice.adapterRule" -}}
{{- $w := .Values.prometheusAdapter.rateWindow -}}
- seriesQuery: 'nv_inference_queue_duration_us{namespace!="",pod!=""}'
  resources:
    overrides:
      namespace: {resource: namespace}
      pod: {resource: pod}
  name:
    matches: ^nv_inference_queue_duration_us$
    as: {{ .Values.autoscaling.metricName }}
  metricsQuery: >-
    sum by (<<.GroupBy>>) (rate(nv_inference_queue_duration_us{<<.LabelMatchers>>}[{{ $w }}]))
    / clamp_min(sum by (<<.GroupBy>>) (rate(nv_inference_request_success{<<.LabelMatchers>>}[{{ $w }}])), 0.001)
{{- end }}
