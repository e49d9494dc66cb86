{{/*
The gateway's container, shared by the two ways it runs: behind the chart's Service (listening on every address,
probed over HTTP by the kubelet) and as a sidecar (listening on 127.0.0.1, which the kubelet cannot reach, so
probed from inside the container, as the Dockerfile's HEALTHCHECK does).
Called with (dict "root" $ "sidecar" bool).
*/}}
{{- define "llm-gateway.probe" -}}
{{- $root := .root }}
{{- if .sidecar }}
exec:
  command:
    - python
    - -c
    - {{ printf "import urllib.request; urllib.request.urlopen('http://127.0.0.1:%v%s', timeout=%v)" $root.Values.port .path .timing.timeoutSeconds | quote }}
{{- else }}
httpGet:
  path: {{ .path }}
  port: http
{{- end }}
{{ toYaml .timing }}
{{- end }}

{{- define "llm-gateway.container" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
name: gateway
image: {{ printf "%s:%s" $v.image.repository ($v.image.tag | default $root.Chart.AppVersion) | quote }}
imagePullPolicy: {{ $v.image.pullPolicy }}
{{- if .sidecar }}
# a native sidecar: started before the application's containers, stopped after them; its port is reachable
# from inside the pod only, so it is not declared
restartPolicy: Always
{{- else }}
ports:
  - name: http
    containerPort: {{ $v.port }}
    protocol: TCP
{{- end }}
env:
  - name: GATEWAY_HOST
    value: {{ ternary "127.0.0.1" "0.0.0.0" (.sidecar | default false) | quote }}
  - name: GATEWAY_PORT
    value: {{ $v.port | quote }}
  {{- if $v.catalogue }}
  - name: GATEWAY_CONFIG
    value: /etc/llm-gateway/gateway.yaml
  {{- end }}
  {{- if $v.demo.enabled }}
  - name: GATEWAY_DEMO
    value: "1"
  {{- end }}
  - name: GATEWAY_SHUTDOWN_GRACE_SECONDS
    value: {{ $v.shutdown.graceSeconds | quote }}
  - name: GATEWAY_SHUTDOWN_CLEANUP_SECONDS
    value: {{ $v.shutdown.cleanupSeconds | quote }}
  - name: GATEWAY_REDIS_PREFIX
    value: {{ $v.redis.prefix | quote }}
  {{- if $v.redis.bundled.enabled }}
  - name: GATEWAY_REDIS_URL
    value: {{ printf "redis://%s:6379/0" (include "llm-gateway.redisName" $root) | quote }}
  {{- else if or $v.redis.url $v.redis.existingSecret }}
  - name: GATEWAY_REDIS_URL
    valueFrom:
      secretKeyRef:
        name: {{ $v.redis.existingSecret | default (printf "%s-redis-url" (include "llm-gateway.fullname" $root)) }}
        key: {{ ternary $v.redis.existingSecretKey "redis-url" (ne $v.redis.existingSecret "") }}
  {{- end }}
  {{- if $v.serviceMonitor.tokenSecret.name }}
  - name: GATEWAY_METRICS_TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ $v.serviceMonitor.tokenSecret.name }}
        key: {{ $v.serviceMonitor.tokenSecret.key }}
  {{- end }}
  {{- if $v.files.persistentVolumeClaim }}
  - name: GATEWAY_FILES_BACKEND
    value: directory
  - name: GATEWAY_FILES_DIRECTORY
    value: {{ $v.files.mountPath | quote }}
  {{- end }}
  {{- range $v.providerKeys }}
  - name: {{ .env }}
    valueFrom:
      secretKeyRef:
        name: {{ .secretName }}
        key: {{ .secretKey }}
  {{- end }}
  {{- range $name, $value := $v.env }}
  - name: {{ $name }}
    value: {{ $value | quote }}
  {{- end }}
  {{- with $v.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- if not .sidecar }}
lifecycle:
  # the drain period: keep serving while the endpoint's removal reaches every proxy, then take SIGTERM
  preStop:
    exec:
      command: ["sleep", {{ $v.shutdown.preStopSleepSeconds | quote }}]
{{- end }}
startupProbe:
  {{- include "llm-gateway.probe" (dict "root" $root "sidecar" .sidecar "path" "/healthz" "timing" $v.probes.startup) | trim | nindent 2 }}
livenessProbe:
  {{- include "llm-gateway.probe" (dict "root" $root "sidecar" .sidecar "path" "/healthz" "timing" $v.probes.liveness) | trim | nindent 2 }}
readinessProbe:
  {{- include "llm-gateway.probe" (dict "root" $root "sidecar" .sidecar "path" $v.probes.readinessPath "timing" $v.probes.readiness) | trim | nindent 2 }}
resources:
  {{- toYaml $v.resources | nindent 2 }}
securityContext:
  {{- toYaml $v.securityContext | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  {{- if $v.catalogue }}
  - name: catalogue
    mountPath: /etc/llm-gateway
    readOnly: true
  {{- end }}
  {{- if $v.files.persistentVolumeClaim }}
  - name: files
    mountPath: {{ $v.files.mountPath }}
  {{- end }}
{{- end }}
