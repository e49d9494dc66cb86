{{/* Names, labels and the checks every render runs. */}}

{{- define "llm-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llm-gateway.fullname" -}}
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

{{/* The labels of every object but its component (gateway, redis, smoke-test). */}}
{{- define "llm-gateway.releaseLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "llm-gateway.instanceLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "llm-gateway.instanceLabels" -}}
app.kubernetes.io/name: {{ include "llm-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "llm-gateway.labels" -}}
{{ include "llm-gateway.releaseLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "llm-gateway.selectorLabels" -}}
{{ include "llm-gateway.instanceLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "llm-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llm-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "llm-gateway.redisName" -}}
{{- printf "%s-redis" (include "llm-gateway.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "true" when the gateway is given a Redis (any of the three ways), "" otherwise. */}}
{{- define "llm-gateway.hasRedis" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret .Values.redis.bundled.enabled }}true{{ end }}
{{- end }}

{{/* The environment variables a catalogue's deployments name in api_key_env, one per line. */}}
{{- define "llm-gateway.apiKeyEnvs" -}}
{{- range $tenant := .Values.catalogue.tenants | default list }}
{{- range $model := $tenant.models | default list }}
{{- range $deployment := prepend ($model.deployments | default list) ($model.deployment | default dict) }}
{{- with $deployment.api_key_env }}
{{ . }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The settings the chart derives from its own values: refused in .Values.env. */}}
{{- define "llm-gateway.chartSettings" -}}
{{- list "GATEWAY_HOST" "GATEWAY_PORT" "GATEWAY_CONFIG" "GATEWAY_DEMO" "GATEWAY_REDIS_URL" "GATEWAY_REDIS_PREFIX" "GATEWAY_SHUTDOWN_GRACE_SECONDS" "GATEWAY_SHUTDOWN_CLEANUP_SECONDS" "GATEWAY_SHUTDOWN_DELAY_SECONDS" "GATEWAY_FILES_BACKEND" "GATEWAY_FILES_DIRECTORY" | toJson }}
{{- end }}

{{/* Every combination of values that cannot run: fail the render with what to change. */}}
{{- define "llm-gateway.validate" -}}
{{- $v := .Values }}
{{- if and (not $v.catalogue) (not $v.demo.enabled) }}
{{- fail "catalogue is required: give your catalogue (docs/config.md) in the value `catalogue`, or set demo.enabled=true to run the image's example catalogue with its published demo keys (a throwaway demo only)" }}
{{- end }}
{{- $redisWays := 0 }}
{{- range (list $v.redis.url $v.redis.existingSecret $v.redis.bundled.enabled) }}{{ if . }}{{ $redisWays = add1 $redisWays }}{{ end }}{{ end }}
{{- if gt $redisWays 1 }}
{{- fail "redis: give only one of redis.url, redis.existingSecret and redis.bundled.enabled" }}
{{- end }}
{{- if and (or (gt (int $v.replicaCount) 1) $v.autoscaling.enabled) (not (include "llm-gateway.hasRedis" .)) }}
{{- fail "more than one replica (replicaCount > 1 or autoscaling.enabled) needs a Redis: without one each replica keeps its own in-memory state (allow-lists, budgets, idempotency, stored responses). Set redis.url, redis.existingSecret or redis.bundled.enabled=true" }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- $shutdown := add $v.shutdown.graceSeconds $v.shutdown.cleanupSeconds $v.shutdown.preStopSleepSeconds }}
{{- if le (float64 $v.terminationGracePeriodSeconds) (float64 $shutdown) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed shutdown.preStopSleepSeconds + shutdown.graceSeconds + shutdown.cleanupSeconds (%v): Kubernetes kills the pod when it runs out, before stopped requests have released what they hold" $v.terminationGracePeriodSeconds $shutdown) }}
{{- end }}
{{- if and $v.ingress.enabled (not $v.ingress.hosts) }}
{{- fail "ingress.enabled needs ingress.hosts: at least one {host, paths}" }}
{{- end }}
{{- if $v.sidecar.enabled }}
{{- if not $v.sidecar.containers }}
{{- fail "sidecar.enabled needs sidecar.containers: your application's containers, beside which the gateway listens on 127.0.0.1" }}
{{- end }}
{{- if or $v.ingress.enabled $v.serviceMonitor.enabled }}
{{- fail "sidecar.enabled: the gateway listens on 127.0.0.1 only, so neither an Ingress nor a ServiceMonitor can reach it; turn ingress.enabled and serviceMonitor.enabled off" }}
{{- end }}
{{- end }}
{{- $reserved := include "llm-gateway.chartSettings" . | fromJsonArray }}
{{- range $name, $_ := $v.env }}
{{- if has $name $reserved }}
{{- fail (printf "env.%s is set by the chart from its values (see values.yaml): set those instead" $name) }}
{{- end }}
{{- end }}
{{- $given := list }}
{{- range $v.providerKeys }}{{ $given = append $given .env }}{{ end }}
{{- range $v.extraEnv }}{{ $given = append $given .name }}{{ end }}
{{- range $name, $_ := $v.env }}{{ $given = append $given $name }}{{ end }}
{{- range (include "llm-gateway.apiKeyEnvs" . | splitList "\n" | compact | uniq) }}
{{- if not (has . $given) }}
{{- fail (printf "the catalogue reads a provider key from %s (api_key_env) but no providerKeys entry maps a Secret to it" .) }}
{{- end }}
{{- end }}
{{- end }}
