{{/*
Names, labels and the pieces of the member environment that several templates share.
*/}}

{{- define "oxcd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The full name: the StatefulSet and the client Service. Kept at most 52 characters so that
"<fullname>-headless" and the pods' "<fullname>-N" labels stay within 63.
*/}}
{{- define "oxcd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "oxcd.headless" -}}
{{- printf "%s-headless" (include "oxcd.fullname" .) -}}
{{- end -}}

{{- define "oxcd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "oxcd.labels" -}}
helm.sh/chart: {{ include "oxcd.chart" . }}
{{ include "oxcd.selectorLabels" . }}
app.kubernetes.io/version: {{ (.Values.image.tag | default .Chart.AppVersion) | toString | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: oxcd
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Stable labels (never change across upgrades): selectors and volumeClaimTemplates. */}}
{{- define "oxcd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "oxcd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The members (StatefulSet pods): not the backup Job's nor the test's pods. */}}
{{- define "oxcd.memberSelectorLabels" -}}
{{ include "oxcd.selectorLabels" . }}
app.kubernetes.io/component: member
{{- end -}}

{{/* metadata.annotations for an object: commonAnnotations merged with the given ones. */}}
{{- define "oxcd.annotations" -}}
{{- $all := merge (deepCopy (.extra | default dict)) (deepCopy (.context.Values.commonAnnotations | default dict)) -}}
{{- if $all -}}
annotations:
  {{- toYaml $all | nindent 2 }}
{{- end -}}
{{- end -}}

{{- define "oxcd.image" -}}
{{- $repo := .Values.image.repository -}}
{{- if .Values.image.registry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .Values.image.registry) .Values.image.repository -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo ((.Values.image.tag | default .Chart.AppVersion) | toString) -}}
{{- end -}}
{{- end -}}

{{- define "oxcd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "oxcd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Quorum: floor(replicas/2)+1. */}}
{{- define "oxcd.quorum" -}}
{{- add (div (int .Values.replicaCount) 2) 1 -}}
{{- end -}}

{{- define "oxcd.clientTLS" -}}
{{- if or .Values.auth.client.secureTransport .Values.auth.client.useAutoTLS -}}true{{- end -}}
{{- end -}}

{{- define "oxcd.peerTLS" -}}
{{- if or .Values.auth.peer.secureTransport .Values.auth.peer.useAutoTLS -}}true{{- end -}}
{{- end -}}

{{- define "oxcd.clientScheme" -}}
{{- if include "oxcd.clientTLS" . -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{- define "oxcd.peerScheme" -}}
{{- if include "oxcd.peerTLS" . -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{/* The client Service's URL, for the backup Job and the test. */}}
{{- define "oxcd.clientURL" -}}
{{- printf "%s://%s.%s.svc.%s:%d" (include "oxcd.clientScheme" .) (include "oxcd.fullname" .) .Release.Namespace .Values.clusterDomain (int64 .Values.service.ports.client) -}}
{{- end -}}

{{/* Whether etcd authentication is on. */}}
{{- define "oxcd.authEnabled" -}}
{{- if .Values.auth.rbac.create -}}true{{- end -}}
{{- end -}}

{{- define "oxcd.rootPasswordSecret" -}}
{{- default (include "oxcd.fullname" .) .Values.auth.rbac.existingSecret -}}
{{- end -}}

{{- define "oxcd.rootPasswordEnv" -}}
{{- if include "oxcd.authEnabled" . -}}
- name: OXCD_ROOT_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "oxcd.rootPasswordSecret" . }}
      key: {{ .Values.auth.rbac.existingSecretPasswordKey }}
{{- end }}
{{- end -}}

{{/* Where the TLS and JWT Secrets are mounted. */}}
{{- define "oxcd.clientCertDir" -}}/etc/oxcd/tls/client{{- end -}}
{{- define "oxcd.peerCertDir" -}}/etc/oxcd/tls/peer{{- end -}}
{{- define "oxcd.jwtDir" -}}/etc/oxcd/jwt{{- end -}}

{{/*
Client TLS flags of `oxcd endpoint health` / `oxcd snapshot save`, one per line: verify against the
Secret's CA when there is one (else skip verification: auto TLS or a CA the image does not know),
present the certificate when the members require client certificates.
*/}}
{{- define "oxcd.clientFlags" -}}
{{- if include "oxcd.clientTLS" . -}}
{{- $dir := include "oxcd.clientCertDir" . -}}
{{- $c := .Values.auth.client -}}
{{- if and $c.existingSecret $c.caFilename }}
--cacert={{ $dir }}/{{ $c.caFilename }}
{{- else }}
--insecure-skip-tls-verify
{{- end }}
{{- if and $c.existingSecret $c.enableAuthentication }}
--cert={{ $dir }}/{{ $c.certFilename }}
--key={{ $dir }}/{{ $c.certKeyFilename }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* The environment a member derives its identity from (the contract with the server). */}}
{{- define "oxcd.identityEnv" -}}
- name: OXCD_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: OXCD_POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OXCD_STATEFULSET
  value: {{ include "oxcd.fullname" . | quote }}
- name: OXCD_HEADLESS_SERVICE
  value: {{ include "oxcd.headless" . | quote }}
- name: OXCD_CLUSTER_DOMAIN
  value: {{ .Values.clusterDomain | quote }}
- name: OXCD_RELEASE
  value: {{ .Release.Name | quote }}
- name: OXCD_REPLICAS
  value: {{ int64 .Values.replicaCount | quote }}
- name: OXCD_CLIENT_SCHEME
  value: {{ include "oxcd.clientScheme" . | quote }}
- name: OXCD_PEER_SCHEME
  value: {{ include "oxcd.peerScheme" . | quote }}
- name: OXCD_CLIENT_PORT
  value: {{ int64 .Values.containerPorts.client | quote }}
- name: OXCD_PEER_PORT
  value: {{ int64 .Values.containerPorts.peer | quote }}
- name: OXCD_CONTROLLER
  value: {{ ternary "true" "false" .Values.controller.enabled | quote }}
{{- with .Values.controller.interval }}
- name: OXCD_CONTROLLER_INTERVAL
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* etcd's own settings. */}}
{{- define "oxcd.etcdEnv" -}}
- name: ETCD_DATA_DIR
  value: /var/lib/oxcd/data
- name: ETCD_LISTEN_CLIENT_URLS
  value: {{ printf "%s://0.0.0.0:%d" (include "oxcd.clientScheme" .) (int64 .Values.containerPorts.client) | quote }}
- name: ETCD_LISTEN_PEER_URLS
  value: {{ printf "%s://0.0.0.0:%d" (include "oxcd.peerScheme" .) (int64 .Values.containerPorts.peer) | quote }}
- name: ETCD_LISTEN_METRICS_URLS
  value: {{ printf "http://0.0.0.0:%d" (int64 .Values.containerPorts.metrics) | quote }}
- name: ETCD_QUOTA_BACKEND_BYTES
  value: {{ int64 .Values.quotaBackendBytes | quote }}
- name: ETCD_AUTO_COMPACTION_MODE
  value: {{ .Values.autoCompactionMode | quote }}
- name: ETCD_AUTO_COMPACTION_RETENTION
  value: {{ .Values.autoCompactionRetention | toString | quote }}
- name: ETCD_SNAPSHOT_COUNT
  value: {{ int64 .Values.snapshotCount | quote }}
- name: ETCD_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- $c := .Values.auth.client }}
{{- if include "oxcd.clientTLS" . }}
{{- if $c.existingSecret }}
{{- $dir := include "oxcd.clientCertDir" . }}
- name: ETCD_CERT_FILE
  value: {{ printf "%s/%s" $dir $c.certFilename | quote }}
- name: ETCD_KEY_FILE
  value: {{ printf "%s/%s" $dir $c.certKeyFilename | quote }}
{{- if $c.caFilename }}
- name: ETCD_TRUSTED_CA_FILE
  value: {{ printf "%s/%s" $dir $c.caFilename | quote }}
{{- end }}
{{- else }}
- name: ETCD_AUTO_TLS
  value: "true"
{{- end }}
- name: ETCD_CLIENT_CERT_AUTH
  value: {{ $c.enableAuthentication | toString | quote }}
{{- end }}
{{- $p := .Values.auth.peer }}
{{- if include "oxcd.peerTLS" . }}
{{- if $p.existingSecret }}
{{- $dir := include "oxcd.peerCertDir" . }}
- name: ETCD_PEER_CERT_FILE
  value: {{ printf "%s/%s" $dir $p.certFilename | quote }}
- name: ETCD_PEER_KEY_FILE
  value: {{ printf "%s/%s" $dir $p.certKeyFilename | quote }}
- name: ETCD_PEER_TRUSTED_CA_FILE
  value: {{ printf "%s/%s" $dir $p.caFilename | quote }}
{{- else }}
- name: ETCD_PEER_AUTO_TLS
  value: "true"
{{- end }}
- name: ETCD_PEER_CLIENT_CERT_AUTH
  value: {{ $p.enableAuthentication | toString | quote }}
{{- end }}
{{- $t := .Values.auth.token }}
- name: ETCD_AUTH_TOKEN
{{- if eq $t.type "jwt" }}
{{- $dir := include "oxcd.jwtDir" . }}
  value: {{ printf "jwt,pub-key=%s/%s,priv-key=%s/%s,sign-method=%s,ttl=%s" $dir $t.privateKey.publicKeyFilename $dir $t.privateKey.filename $t.signMethod $t.ttl | quote }}
{{- else }}
  value: simple
{{- end }}
{{- end -}}

{{/* Refuse combinations that would only fail at run time. */}}
{{/* The StatefulSet's update strategy: OnDelete when the controller rolls upgrades. */}}
{{- define "oxcd.updateStrategy" -}}
{{- if .Values.updateStrategy -}}
{{- toYaml .Values.updateStrategy -}}
{{- else if .Values.controller.enabled -}}
type: OnDelete
{{- else -}}
type: RollingUpdate
{{- end -}}
{{- end -}}

{{- define "oxcd.validateValues" -}}
{{- if and .Values.controller.enabled (not .Values.serviceAccount.automountServiceAccountToken) -}}
{{- fail "controller.enabled needs serviceAccount.automountServiceAccountToken: the controller reads its StatefulSet with the pod's token" -}}
{{- end -}}
{{- $c := .Values.auth.client -}}
{{- $p := .Values.auth.peer -}}
{{- if and (include "oxcd.clientTLS" .) (not $c.existingSecret) (not $c.useAutoTLS) -}}
{{- fail "auth.client.secureTransport needs auth.client.existingSecret (certificates) or auth.client.useAutoTLS" -}}
{{- end -}}
{{- if and $c.existingSecret $c.useAutoTLS -}}
{{- fail "auth.client: set either existingSecret or useAutoTLS, not both" -}}
{{- end -}}
{{- if and $c.enableAuthentication (not (and $c.existingSecret $c.caFilename)) -}}
{{- fail "auth.client.enableAuthentication (client certificates) needs auth.client.existingSecret with auth.client.caFilename" -}}
{{- end -}}
{{- if and (include "oxcd.peerTLS" .) (not $p.existingSecret) (not $p.useAutoTLS) -}}
{{- fail "auth.peer.secureTransport needs auth.peer.existingSecret (certificates) or auth.peer.useAutoTLS" -}}
{{- end -}}
{{- if and $p.existingSecret $p.useAutoTLS -}}
{{- fail "auth.peer: set either existingSecret or useAutoTLS, not both" -}}
{{- end -}}
{{- if and (include "oxcd.peerTLS" .) $p.existingSecret (not $p.caFilename) -}}
{{- fail "auth.peer.existingSecret needs auth.peer.caFilename: members verify each other against it" -}}
{{- end -}}
{{- if and $p.enableAuthentication (not (and $p.existingSecret $p.caFilename)) -}}
{{- fail "auth.peer.enableAuthentication needs auth.peer.existingSecret with auth.peer.caFilename" -}}
{{- end -}}
{{- if and (eq .Values.auth.token.type "jwt") (not .Values.auth.token.privateKey.existingSecret) -}}
{{- fail "auth.token.type=jwt needs auth.token.privateKey.existingSecret holding the private and the public key (PEM)" -}}
{{- end -}}
{{- if and .Values.startFromSnapshot.enabled (not (and .Values.startFromSnapshot.existingClaim .Values.startFromSnapshot.snapshotFilename)) -}}
{{- fail "startFromSnapshot.enabled needs startFromSnapshot.existingClaim and startFromSnapshot.snapshotFilename" -}}
{{- end -}}
{{- end -}}
