{{/* Deployment, Services, PDB and Ingress of an HTTP service (signal, auth).
     Call with (dict "ctx" $ "component" "signal"). */}}
{{- define "iceway.httpService" -}}
{{- $ := .ctx -}}
{{- $c := .component -}}
{{- $v := index $.Values $c -}}
{{- $name := printf "%s-%s" (include "iceway.fullname" $) $c -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels:
    {{- include "iceway.labels" (dict "ctx" $ "component" $c) | nindent 4 }}
spec:
  {{- if not (and (eq $c "signal") $v.autoscaling.enabled) }}
  replicas: {{ $v.replicas }}
  {{- end }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
  selector:
    matchLabels:
      {{- include "iceway.selectorLabels" (dict "ctx" $ "component" $c) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "iceway.labels" (dict "ctx" $ "component" $c) | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- include "iceway.checksums" (dict "ctx" $ "component" $c) | nindent 8 }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "iceway.serviceAccountName" $ }}
      automountServiceAccountToken: {{ $.Values.serviceAccount.automountToken }}
      {{- with $.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      securityContext:
        {{- toYaml $.Values.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ $c }}
          image: {{ include "iceway.image" (dict "ctx" $ "binary" (printf "iceway-%s" $c)) }}
          imagePullPolicy: {{ $.Values.image.pullPolicy }}
          args:
            {{- include "iceway.commonArgs" (dict "ctx" $ "component" $c "admin" $v.ports.admin) | nindent 12 }}
            - --listen=0.0.0.0:{{ $v.ports.http }}
            {{- include "iceway.appAuthArgs" $ | trim | nindent 12 }}
            {{- with $v.extraArgs }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- if $v.extraEnv }}
          env:
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- end }}
          ports:
            - name: http
              containerPort: {{ $v.ports.http }}
              protocol: TCP
            - name: admin
              containerPort: {{ $v.ports.admin }}
              protocol: TCP
          {{- include "iceway.probes" (dict "ctx" $ "port" "admin") | nindent 10 }}
          {{- with include "iceway.lifecycle" $v.preStopSleepSeconds | trim }}
          {{- . | nindent 10 }}
          {{- end }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- include "iceway.containerSecurityContext" (dict "ctx" $ "ports" (list $v.ports.http $v.ports.admin)) | nindent 12 }}
          volumeMounts:
            {{- include "iceway.volumeMounts" (dict "ctx" $ "component" $c "jwt" true) | nindent 12 }}
      volumes:
        {{- include "iceway.volumes" (dict "ctx" $ "component" $c "jwt" true) | nindent 8 }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if $v.affinity }}
      affinity:
        {{- toYaml $v.affinity | nindent 8 }}
      {{- else }}
      # Spread replicas over nodes so one node loss does not drop every connection at once.
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                topologyKey: kubernetes.io/hostname
                labelSelector:
                  matchLabels:
                    {{- include "iceway.selectorLabels" (dict "ctx" $ "component" $c) | nindent 20 }}
      {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  labels:
    {{- include "iceway.labels" (dict "ctx" $ "component" $c) | nindent 4 }}
  {{- with $v.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $v.service.type }}
  selector:
    {{- include "iceway.selectorLabels" (dict "ctx" $ "component" $c) | nindent 4 }}
  ports:
    - name: http
      port: {{ $v.service.port }}
      targetPort: http
      protocol: TCP
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}-admin
  labels:
    {{- include "iceway.labels" (dict "ctx" $ "component" $c) | nindent 4 }}
    iceway/admin: "true"
spec:
  clusterIP: None
  selector:
    {{- include "iceway.selectorLabels" (dict "ctx" $ "component" $c) | nindent 4 }}
  ports:
    - name: admin
      port: {{ $v.ports.admin }}
      targetPort: admin
      protocol: TCP
{{- if $v.pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $name }}
  labels:
    {{- include "iceway.labels" (dict "ctx" $ "component" $c) | nindent 4 }}
spec:
  maxUnavailable: {{ $v.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "iceway.selectorLabels" (dict "ctx" $ "component" $c) | nindent 6 }}
{{- end }}
{{- if $v.ingress.enabled }}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ $name }}
  labels:
    {{- include "iceway.labels" (dict "ctx" $ "component" $c) | nindent 4 }}
  {{- $ann := dict }}
  {{- if eq $c "signal" }}
  {{- $t := toString (int $v.ingress.websocketTimeoutSeconds) }}
  {{- /* ingress-nginx closes idle upstream sockets after 60 s by default, which ends WebSockets. */}}
  {{- $ann = dict "nginx.ingress.kubernetes.io/proxy-read-timeout" $t "nginx.ingress.kubernetes.io/proxy-send-timeout" $t "haproxy.org/timeout-tunnel" (printf "%ss" $t) }}
  {{- end }}
  {{- $ann = merge (deepCopy (default dict $v.ingress.annotations)) $ann }}
  {{- with $ann }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with $v.ingress.className }}
  ingressClassName: {{ . }}
  {{- end }}
  {{- with $v.ingress.tls }}
  tls:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  rules:
    {{- range $v.ingress.hosts }}
    - host: {{ .host | quote }}
      http:
        paths:
          {{- range .paths }}
          - path: {{ .path }}
            pathType: {{ .pathType }}
            backend:
              service:
                name: {{ $name }}
                port:
                  name: http
          {{- end }}
    {{- end }}
{{- end }}
{{- end -}}
