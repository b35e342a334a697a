{{/* Names ----------------------------------------------------------------------------------- */}}

{{- define "iceway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Kept short enough that "<fullname>-signal-admin" stays within 63 characters. */}}
{{- define "iceway.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "iceway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels: call with (dict "ctx" $ "component" "turn"). ---------------------------------------- */}}

{{- define "iceway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "iceway.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{- define "iceway.labels" -}}
helm.sh/chart: {{ include "iceway.chart" .ctx }}
{{ include "iceway.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: iceway
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Images ------------------------------------------------------------------------------------ */}}

{{/* (dict "ctx" $ "binary" "iceway-turn") */}}
{{- define "iceway.image" -}}
{{- $img := .ctx.Values.image -}}
{{- $tag := default .ctx.Chart.AppVersion $img.tag -}}
{{- if $img.registry -}}
{{- printf "%s/%s/%s:%s" $img.registry $img.repositoryPrefix .binary $tag -}}
{{- else -}}
{{- printf "%s/%s:%s" $img.repositoryPrefix .binary $tag -}}
{{- end -}}
{{- end -}}

{{- define "iceway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "iceway.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Secrets ----------------------------------------------------------------------------------- */}}

{{- define "iceway.secretName" -}}
{{- default (printf "%s-secrets" (include "iceway.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* ICE server URLs handed to apps, one per line. */}}
{{- define "iceway.iceServerURLs" -}}
{{- if .Values.iceServers.urls -}}
{{- range .Values.iceServers.urls }}
{{ . }}
{{- end -}}
{{- else if .Values.turn.publicHost -}}
{{- $h := .Values.turn.publicHost -}}
{{- $p := .Values.turn.ports }}
stun:{{ $h }}:{{ $p.udp }}
turn:{{ $h }}:{{ $p.udp }}?transport=udp
turn:{{ $h }}:{{ $p.tcp }}?transport=tcp
{{- if .Values.turn.tls.enabled }}
turns:{{ $h }}:{{ $p.tls }}?transport=tcp
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Security ---------------------------------------------------------------------------------- */}}

{{/* (dict "ctx" $ "ports" (list ...)): the hardened context, plus NET_BIND_SERVICE only when a
     listening port is below 1024. */}}
{{- define "iceway.containerSecurityContext" -}}
{{- $sc := deepCopy .ctx.Values.containerSecurityContext -}}
{{- $low := false -}}
{{- range .ports }}{{ if lt (int .) 1024 }}{{ $low = true }}{{ end }}{{ end -}}
{{- if $low -}}
{{- $caps := default dict $sc.capabilities -}}
{{- $_ := set $caps "add" (list "NET_BIND_SERVICE") -}}
{{- $_ := set $sc "capabilities" $caps -}}
{{- end -}}
{{- toYaml $sc -}}
{{- end -}}

{{/* Pod-level pieces -------------------------------------------------------------------------- */}}

{{/* (dict "ctx" $ "port" 9478) */}}
{{- define "iceway.probes" -}}
{{- $p := .ctx.Values.probes -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  initialDelaySeconds: {{ $p.liveness.initialDelaySeconds }}
  periodSeconds: {{ $p.liveness.periodSeconds }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ .port }}
  initialDelaySeconds: {{ $p.readiness.initialDelaySeconds }}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
{{- end -}}

{{/* The image has no shell: sleep through the preStop hook, so endpoints and load balancers drop
     the pod before SIGTERM starts the drain. */}}
{{- define "iceway.lifecycle" -}}
{{- if gt (int .) 0 }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ . }}
{{- end -}}
{{- end -}}

{{/* Arguments every service takes: (dict "ctx" $ "component" "turn" "admin" 9478) */}}
{{- define "iceway.commonArgs" -}}
- --config=/etc/iceway/config/{{ .component }}.toml
- --admin=0.0.0.0:{{ .admin }}
- --log-format={{ .ctx.Values.logFormat }}
{{- end -}}

{{/* signal and auth: app-JWT keys, the TURN secret and the ICE URLs. */}}
{{- define "iceway.appAuthArgs" -}}
{{- if .Values.appAuth.hs256 }}
- --jwt-secret-file=/etc/iceway/secrets/{{ .Values.secrets.jwtSecretKey }}
{{- end }}
{{- range .Values.appAuth.publicKeys.keys }}
- --jwt-key={{ .kid }}={{ .alg }}:/etc/iceway/jwt-keys/{{ .file }}
{{- end }}
- --turn-secret-file=/etc/iceway/secrets/{{ .Values.secrets.turnSecretsKey }}
{{- range (include "iceway.iceServerURLs" . | trim | splitList "\n") }}
{{- if . }}
- --turn-url={{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* (dict "ctx" $ "component" "signal" "jwt" true) */}}
{{- define "iceway.volumes" -}}
- name: config
  configMap:
    name: {{ include "iceway.fullname" .ctx }}-{{ .component }}-config
    items:
      - key: {{ .component }}.toml
        path: {{ .component }}.toml
{{- if ne .component "stun" }}
- name: secrets
  secret:
    secretName: {{ include "iceway.secretName" .ctx }}
    defaultMode: 0440
    items:
      - key: {{ .ctx.Values.secrets.turnSecretsKey }}
        path: {{ .ctx.Values.secrets.turnSecretsKey }}
      {{- if and .jwt .ctx.Values.appAuth.hs256 }}
      - key: {{ .ctx.Values.secrets.jwtSecretKey }}
        path: {{ .ctx.Values.secrets.jwtSecretKey }}
      {{- end }}
{{- end }}
{{- if and .jwt .ctx.Values.appAuth.publicKeys.secretName }}
- name: jwt-keys
  secret:
    secretName: {{ .ctx.Values.appAuth.publicKeys.secretName }}
    defaultMode: 0440
{{- end }}
{{- if and (eq .component "signal") .ctx.Values.signal.redis.existingSecret }}
- name: redis
  secret:
    secretName: {{ .ctx.Values.signal.redis.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .ctx.Values.signal.redis.existingSecretKey }}
        path: {{ .ctx.Values.signal.redis.existingSecretKey }}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 16Mi
{{- end -}}

{{- define "iceway.volumeMounts" -}}
- name: config
  mountPath: /etc/iceway/config
  readOnly: true
{{- if ne .component "stun" }}
- name: secrets
  mountPath: /etc/iceway/secrets
  readOnly: true
{{- end }}
{{- if and .jwt .ctx.Values.appAuth.publicKeys.secretName }}
- name: jwt-keys
  mountPath: /etc/iceway/jwt-keys
  readOnly: true
{{- end }}
{{- if and (eq .component "signal") .ctx.Values.signal.redis.existingSecret }}
- name: redis
  mountPath: /etc/iceway/redis
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Pod annotations that roll a component when its own configuration changes:
     (dict "ctx" $ "component" "turn"). The chart's Secret (TURN secrets, app key) is not in
     them: every service re-reads those files when the kubelet updates the mount, so rotating
     a secret rolls nothing and cuts no call (docs/deploy-kubernetes.md). */}}
{{- define "iceway.checksums" -}}
checksum/config: {{ include "iceway.configMap" . | sha256sum }}
{{- end -}}

{{/* The ConfigMap of one component: (dict "ctx" $ "component" "turn"). */}}
{{- define "iceway.configMap" -}}
{{- $ := .ctx -}}
{{- $c := .component -}}
{{- $v := index $.Values $c -}}
{{- /* Drain until shortly before the kubelet's SIGKILL: grace minus the preStop sleep and a margin. */ -}}
{{- $drain := printf "%ds" (max 1 (sub (int $v.terminationGracePeriodSeconds) (add (int $v.preStopSleepSeconds) 5))) -}}
{{- $derived := dict -}}
{{- if eq $c "turn" -}}
{{- $derived = dict "turn" (dict "tls_listen" (list (printf "0.0.0.0:%d" (int $.Values.turn.ports.tls)))) "drain" (dict "timeout" $drain) -}}
{{- with $.Values.turn.externalIP.fromStun -}}
{{- $_ := set $derived.turn "external_ip_stun" . -}}
{{- end -}}
{{- else if ne $c "signal" -}}
{{- $derived = dict "drain" (dict "timeout" $drain) -}}
{{- end -}}
{{- /* Behind the chart's ingress every client arrives from the ingress's address: key the
       per-client limits on X-Forwarded-For (the ingress sets it), or all share one bucket. */ -}}
{{- /* The Redis URL (its password, if any) reaches signal through its configuration file or a
       mounted Secret file, never through argv or the environment, which `ps` and
       /proc/<pid>/environ show. */ -}}
{{- if eq $c "signal" -}}
{{- if $v.redis.existingSecret -}}
{{- $_ := set $derived "signal" (dict "redis_url_file" (printf "/etc/iceway/redis/%s" $v.redis.existingSecretKey)) -}}
{{- else if $v.redis.url -}}
{{- $_ := set $derived "signal" (dict "redis_url" $v.redis.url) -}}
{{- end -}}
{{- end -}}
{{- if and (has $c (list "signal" "auth")) $v.ingress.enabled $v.ingress.trustForwardedFor -}}
{{- if eq $c "signal" -}}
{{- $_ := set $derived "signal" (merge (default dict (get $derived "signal")) (dict "trust_forwarded_for" true)) -}}
{{- else -}}
{{- $_ := set $derived "auth" (dict "rate_limit" (dict "trust_forwarded_for" true)) -}}
{{- end -}}
{{- end -}}
{{- $cfg := mergeOverwrite (deepCopy $derived) (deepCopy (default dict $v.config)) -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "iceway.fullname" $ }}-{{ $c }}-config
  labels:
    {{- include "iceway.labels" (dict "ctx" $ "component" $c) | nindent 4 }}
data:
  {{ $c }}.toml: |
    # iceway-{{ if eq $c "stun" }}turn --stun-only{{ else }}{{ $c }}{{ end }}: derived by the chart, overlaid by values.{{ $c }}.config
    {{- with $cfg }}
    {{- include "iceway.toml" (dict "table" . "prefix" "") | trim | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* Number of relay ports the range holds. */}}
{{- define "iceway.relayPortCount" -}}
{{- add 1 (sub (int .Values.turn.relayRange.max) (int .Values.turn.relayRange.min)) -}}
{{- end -}}

{{/* Label selector the alert rules scope their series with. */}}
{{- define "iceway.alertSelector" -}}
namespace="{{ .Release.Namespace }}"
{{- end -}}

{{/* iceway-turn's client listeners. `--listen ADDR` opens UDP and TCP on ADDR. */}}
{{- define "iceway.turnListenArgs" -}}
{{- $p := .ports }}
- --listen=0.0.0.0:{{ $p.udp }}
{{- if ne (int $p.udp) (int $p.tcp) }}
- --listen=0.0.0.0:{{ $p.tcp }}
{{- end }}
{{- end -}}

{{/* TOML from a values map. Helm's toToml writes every YAML number as a float (10 -> 10.0), which
     integer settings refuse; this writes integral numbers as integers.
     (dict "table" MAP "prefix" "turn") */}}
{{- define "iceway.tomlValue" -}}
{{- if kindIs "string" . -}}{{ toJson . }}
{{- else if kindIs "bool" . -}}{{ . }}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) -}}
{{- if eq (floor .) (float64 .) }}{{ int64 . }}{{ else }}{{ . }}{{ end -}}
{{- else if kindIs "slice" . -}}
[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "iceway.tomlValue" $e }}{{ end }}]
{{- else if kindIs "invalid" . -}}{{ fail "a TOML value cannot be null" }}
{{- else -}}{{ . }}
{{- end -}}
{{- end -}}

{{- define "iceway.toml" -}}
{{- $t := .table -}}
{{- range $k := keys $t | sortAlpha }}
{{- $v := index $t $k }}
{{- if not (kindIs "map" $v) }}
{{ $k }} = {{ include "iceway.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k := keys $t | sortAlpha }}
{{- $v := index $t $k }}
{{- if kindIs "map" $v }}
{{- $name := ternary $k (printf "%s.%s" $.prefix $k) (eq $.prefix "") }}
[{{ $name }}]
{{- include "iceway.toml" (dict "table" $v "prefix" $name) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Bridge ------------------------------------------------------------------------------------ */}}

{{- define "iceway.bridgeSecretName" -}}
{{- default (printf "%s-bridge" (include "iceway.fullname" .)) .Values.bridge.existingSecret -}}
{{- end -}}

{{- define "iceway.bridgeSignalURL" -}}
{{- if .Values.bridge.signalUrl -}}
{{- .Values.bridge.signalUrl -}}
{{- else if .Values.signal.enabled -}}
{{- printf "ws://%s-signal:%d/v1/ws" (include "iceway.fullname" .) (int .Values.signal.service.port) -}}
{{- else -}}
{{- fail "bridge: set bridge.signalUrl (signal.enabled is false, so there is no in-cluster signal to default to)" -}}
{{- end -}}
{{- end -}}

{{/* Refuses bridge values that cannot work, naming the key. */}}
{{- define "iceway.bridgeValidate" -}}
{{- $b := .Values.bridge -}}
{{- if gt (int $b.replicas) 1 -}}
{{- fail "bridge.replicas must be 0 or 1: each camera must be published by exactly one bridge (signal hands a camera id to its newest publisher); run another release with a disjoint camera list instead" -}}
{{- end -}}
{{- if and $b.existingSecret $b.cameras -}}
{{- fail "bridge.existingSecret and bridge.cameras exclude each other: the cameras come from one Secret" -}}
{{- end -}}
{{- if not (or $b.existingSecret $b.cameras) -}}
{{- fail "bridge.enabled needs bridge.cameras or bridge.existingSecret (a Secret with key bridge.toml)" -}}
{{- end -}}
{{- if and $b.existingSecret $b.config -}}
{{- fail "bridge.config applies to the chart-rendered bridge.toml only: with bridge.existingSecret put those settings in its bridge.toml" -}}
{{- end -}}
{{- if and $b.cameras (not .Values.appAuth.hs256) -}}
{{- fail "bridge.cameras: the bridge mints its camera tokens with the HS256 app key, which needs appAuth.hs256 (or use bridge.existingSecret with a token_file per camera)" -}}
{{- end -}}
{{- if hasKey (default dict $b.config.bridge) "cameras" -}}
{{- fail "bridge.config.bridge.cameras: list the cameras in bridge.cameras" -}}
{{- end -}}
{{- range $i, $cam := $b.cameras -}}
{{- if not (and $cam.id $cam.url) -}}
{{- fail (printf "bridge.cameras[%d]: id and url are required" $i) -}}
{{- end -}}
{{- if contains "@" (regexReplaceAll "^[a-z]+://([^/]*).*$" $cam.url "${1}") -}}
{{- fail (printf "bridge.cameras[%d].url: credentials go in username and password, not the URL" $i) -}}
{{- end -}}
{{- if contains ":" (default "" $cam.username) -}}
{{- fail (printf "bridge.cameras[%d].username: no ':' (the credentials file is USER:PASSWORD)" $i) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The chart-rendered bridge.toml: bridge.config, then one [[bridge.cameras]] per camera. */}}
{{- define "iceway.bridgeToml" -}}
# iceway-bridge cameras: rendered by the chart from values.bridge.cameras and values.bridge.config
{{- with .Values.bridge.config }}
{{- include "iceway.toml" (dict "table" . "prefix" "") }}
{{- end }}
{{- range $i, $cam := .Values.bridge.cameras }}

[[bridge.cameras]]
id = {{ toJson (toString $cam.id) }}
url = {{ toJson $cam.url }}
transport = {{ toJson (default "tcp" $cam.transport) }}
{{- if $cam.username }}
credentials_file = {{ toJson (printf "/etc/iceway/bridge/camera-%d.credentials" $i) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The bridge's flags: everything but the cameras, which are in the mounted Secret. No secret
     here: the app key and the camera credentials are files. */}}
{{- define "iceway.bridgeArgs" -}}
{{- $b := .Values.bridge -}}
{{- $drain := max 1 (sub (int $b.terminationGracePeriodSeconds) (add (int $b.preStopSleepSeconds) 5)) -}}
- --config=/etc/iceway/bridge/bridge.toml
- --admin=0.0.0.0:{{ $b.ports.admin }}
- --log-format={{ .Values.logFormat }}
- --drain-timeout={{ $drain }}s
- --signal-url={{ include "iceway.bridgeSignalURL" . }}
{{- if .Values.appAuth.hs256 }}
- --jwt-secret-file=/etc/iceway/secrets/{{ .Values.secrets.jwtSecretKey }}
{{- end }}
{{- if $b.relayOnly }}
- --relay-only
{{- end }}
{{- end -}}

{{- define "iceway.bridgeVolumes" -}}
- name: cameras
  secret:
    secretName: {{ include "iceway.bridgeSecretName" . }}
    defaultMode: 0440
{{- if .Values.appAuth.hs256 }}
- name: secrets
  secret:
    secretName: {{ include "iceway.secretName" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.secrets.jwtSecretKey }}
        path: {{ .Values.secrets.jwtSecretKey }}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 16Mi
{{- end -}}

{{- define "iceway.bridgeVolumeMounts" -}}
- name: cameras
  mountPath: /etc/iceway/bridge
  readOnly: true
{{- if .Values.appAuth.hs256 }}
- name: secrets
  mountPath: /etc/iceway/secrets
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end -}}
