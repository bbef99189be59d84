{{- /*
Every named template here takes one argument:

    (dict "root" $ "values" <the spool values>)

`root` is the top-level context of the chart that renders the pod (for
.Release and .Capabilities) and `values` is spool's values: `.Values` in
this chart's own templates, `.Values.spool` in a chart that has spool as a
dependency. So the same templates work in both, and nothing here reads
.Chart or .Values from `root` (in a parent chart they are the parent's).
*/ -}}

{{- define "spool.checkArgs" -}}
{{- if not (and (kindIs "map" .) (hasKey . "root") (hasKey . "values")) -}}
{{- fail "spool templates take (dict \"root\" $ \"values\" .Values.spool)" -}}
{{- end -}}
{{- end -}}

{{- /* The base name of every object; ConfigMaps add "-config", so 56 at most. */ -}}
{{- define "spool.fullname" -}}
{{- include "spool.checkArgs" . -}}
{{- $v := .values -}}
{{- if $v.fullnameOverride -}}
{{- $v.fullnameOverride | trunc 56 | trimSuffix "-" -}}
{{- else if contains "spool" .root.Release.Name -}}
{{- .root.Release.Name | trunc 56 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-spool" .root.Release.Name | trunc 56 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- /* The chart's appVersion, also from a parent chart's context. */ -}}
{{- define "spool.appVersion" -}}
{{- if eq .root.Chart.Name "spool" -}}
{{- .root.Chart.AppVersion -}}
{{- else if and .root.Subcharts (hasKey .root.Subcharts "spool") -}}
{{- (index .root.Subcharts "spool").Chart.AppVersion -}}
{{- end -}}
{{- end -}}

{{- define "spool.image" -}}
{{- $v := .values -}}
{{- $tag := $v.image.tag | default (include "spool.appVersion" .) -}}
{{- if not $tag -}}
{{- fail "spool: set image.tag (the chart's appVersion cannot be found from this chart)" -}}
{{- end -}}
{{- printf "%s:%s" $v.image.repository (toString $tag) -}}
{{- end -}}

{{- /* Labels of the chart's own objects (rendered in this chart's context). */ -}}
{{- define "spool.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: spool
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ include "spool.appVersion" . | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- /* The demo app's pod labels: its selector and the monitors' default. */ -}}
{{- define "spool.demoSelector" -}}
app.kubernetes.io/name: spool
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: demo-app
{{- end -}}

{{- define "spool.monitorSelector" -}}
{{- if .values.monitoring.selector -}}
{{- toYaml .values.monitoring.selector -}}
{{- else if .values.demo.enabled -}}
{{- include "spool.demoSelector" . -}}
{{- else -}}
{{- fail "spool: set monitoring.selector to the labels of the pods that carry spool" -}}
{{- end -}}
{{- end -}}

{{- define "spool.databaseUrlSecret" -}}
{{- if .values.databaseUrl.secretName -}}
{{- .values.databaseUrl.secretName -}}
{{- else if .values.demo.enabled -}}
{{- printf "%s-demo" (include "spool.fullname" .) -}}
{{- else -}}
{{- fail "spool: set databaseUrl.secretName (an existing Secret holding the database URL)" -}}
{{- end -}}
{{- end -}}

{{- define "spool.adminTokenSecret" -}}
{{- if .values.adminToken.secretName -}}
{{- .values.adminToken.secretName -}}
{{- else if .values.demo.enabled -}}
{{- printf "%s-demo" (include "spool.fullname" .) -}}
{{- else -}}
{{- fail "spool: set adminToken.secretName (an existing Secret holding the admin token)" -}}
{{- end -}}
{{- end -}}

{{- /* host:port, with brackets around an IPv6 address. */ -}}
{{- define "spool.hostPort" -}}
{{- $host := index . 0 -}}
{{- if contains ":" $host -}}
{{- printf "[%s]:%d" $host (int (index . 1)) -}}
{{- else -}}
{{- printf "%s:%d" $host (int (index . 1)) -}}
{{- end -}}
{{- end -}}

{{- /*
Whole numbers back to integers, in place. Helm may hold the numbers of a
values file as float64, and toToml then writes `20.0` (Helm 4 does),
which spool rejects for an integer key. Takes (dict "v" value "out" holder)
and sets holder.v; a number with a fraction stays a float.
*/ -}}
{{- define "spool.intify" -}}
{{- $v := .v -}}
{{- if kindIs "map" $v -}}
{{- range $key, $item := $v -}}
{{- $sub := dict "v" $item -}}
{{- include "spool.intify" $sub -}}
{{- $_ := set $v $key $sub.v -}}
{{- end -}}
{{- $_ := set . "v" $v -}}
{{- else if kindIs "slice" $v -}}
{{- $items := list -}}
{{- range $item := $v -}}
{{- $sub := dict "v" $item -}}
{{- include "spool.intify" $sub -}}
{{- $items = append $items $sub.v -}}
{{- end -}}
{{- $_ := set . "v" $items -}}
{{- else if and (kindIs "float64" $v) (eq $v (floor $v)) -}}
{{- $_ := set . "v" (int64 $v) -}}
{{- end -}}
{{- end -}}

{{- /* spool.toml: .values.config plus the keys the chart owns. */ -}}
{{- define "spool.configToml" -}}
{{- $v := .values -}}
{{- if eq (int $v.ports.data) (int $v.ports.admin) -}}
{{- fail "spool: ports.data and ports.admin must differ" -}}
{{- end -}}
{{- $cfg := deepCopy ($v.config | default dict) -}}
{{- $server := deepCopy (get $cfg "server" | default dict) -}}
{{- $_ := set $server "listen" (include "spool.hostPort" (list $v.listen.dataAddress $v.ports.data)) -}}
{{- $_ := set $server "admin_listen" (include "spool.hostPort" (list $v.listen.adminAddress $v.ports.admin)) -}}
{{- $_ := set $cfg "server" $server -}}
{{- if $v.demo.enabled -}}
{{- $routes := get $cfg "routes" | default list -}}
{{- $has := false -}}
{{- range $routes -}}
{{- if eq .name "demo" -}}{{- $has = true -}}{{- end -}}
{{- end -}}
{{- if not $has -}}
{{- $sink := printf "http://%s-demo-sink:%d/cgi-bin/sink" (include "spool.fullname" .) (int $v.demo.sinkPort) -}}
{{- $routes = append $routes (dict "name" "demo" "timeout_ms" 2000 "targets" (list (dict "name" "sink" "url" $sink))) -}}
{{- end -}}
{{- $_ := set $cfg "routes" $routes -}}
{{- end -}}
{{- $holder := dict "v" $cfg -}}
{{- include "spool.intify" $holder -}}
# spool.toml, rendered by the spool chart from its `config` value.
# server.listen and server.admin_listen come from `ports` and `listen`.
{{ toToml $holder.v -}}
{{- end -}}

{{- /* The pod annotation that rolls the pods when spool.toml changes. */ -}}
{{- define "spool.podAnnotations" -}}
checksum/spool-config: {{ include "spool.configToml" . | sha256sum }}
{{- end -}}

{{- define "spool.httpProbe" -}}
{{- $p := index . 0 -}}
httpGet:
  path: {{ $p.path }}
  port: spool-admin
  scheme: HTTP
periodSeconds: {{ int $p.periodSeconds }}
timeoutSeconds: {{ int $p.timeoutSeconds }}
failureThreshold: {{ int $p.failureThreshold }}
{{- if hasKey $p "successThreshold" }}
successThreshold: {{ int $p.successThreshold }}
{{- end }}
{{- end -}}

{{- /*
spool's container, as one list item: put it under initContainers when
nativeSidecar is true (it carries restartPolicy: Always), else under
containers. "spool.initContainers" and "spool.containers" do that choice.
*/ -}}
{{- define "spool.sidecar" -}}
{{- include "spool.checkArgs" . -}}
{{- $v := .values -}}
{{- $kube := .root.Capabilities.KubeVersion.Version -}}
{{- if and $v.nativeSidecar (not (semverCompare ">=1.29.0-0" $kube)) -}}
{{- fail (printf "spool: nativeSidecar needs Kubernetes 1.29 or later (this is %s): set nativeSidecar=false" $kube) -}}
{{- end -}}
- name: {{ $v.containerName }}
  image: {{ include "spool.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if $v.nativeSidecar }}
  restartPolicy: Always
  {{- end }}
  command: ["/usr/local/bin/spool"]
  args: ["--config", "/etc/spool/config/spool.toml", "run"]
  env:
    - name: SPOOL_DATABASE_URL_FILE
      value: /etc/spool/secrets/database-url
    - name: SPOOL_ADMIN_TOKEN_FILE
      value: /etc/spool/secrets/admin-token
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- if not (or (hasPrefix "127." $v.listen.dataAddress) (eq $v.listen.dataAddress "::1")) }}
    - name: spool-data
      containerPort: {{ int $v.ports.data }}
      protocol: TCP
    {{- end }}
    - name: spool-admin
      containerPort: {{ int $v.ports.admin }}
      protocol: TCP
  {{- if $v.startupProbe.enabled }}
  startupProbe:
    {{- include "spool.httpProbe" (list $v.startupProbe) | nindent 4 }}
  {{- end }}
  {{- if $v.livenessProbe.enabled }}
  livenessProbe:
    {{- include "spool.httpProbe" (list $v.livenessProbe) | nindent 4 }}
  {{- end }}
  {{- if $v.readinessProbe.enabled }}
  readinessProbe:
    {{- include "spool.httpProbe" (list $v.readinessProbe) | nindent 4 }}
  {{- end }}
  {{- if and (not $v.nativeSidecar) (gt (int $v.preStopSleepSeconds) 0) (semverCompare ">=1.30.0-0" $kube) }}
  lifecycle:
    preStop:
      sleep:
        seconds: {{ int $v.preStopSleepSeconds }}
  {{- end }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- $sc := dict -}}
    {{- range $key, $val := $v.securityContext -}}
    {{- if not (kindIs "invalid" $val) -}}{{- $_ := set $sc $key $val -}}{{- end -}}
    {{- end }}
    {{- toYaml $sc | nindent 4 }}
  terminationMessagePolicy: FallbackToLogsOnError
  volumeMounts:
    - name: spool-config
      mountPath: /etc/spool/config
      readOnly: true
    - name: spool-secrets
      mountPath: /etc/spool/secrets
      readOnly: true
    {{- with $v.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{- /* The sidecar under initContainers when native, else nothing. */ -}}
{{- define "spool.initContainers" -}}
{{- if .values.nativeSidecar -}}
{{- include "spool.sidecar" . -}}
{{- end -}}
{{- end -}}

{{- /* The sidecar under containers when not native, else nothing. */ -}}
{{- define "spool.containers" -}}
{{- if not .values.nativeSidecar -}}
{{- include "spool.sidecar" . -}}
{{- end -}}
{{- end -}}

{{- /* The pod's volumes for spool, as list items. */ -}}
{{- define "spool.volumes" -}}
{{- include "spool.checkArgs" . -}}
{{- $v := .values -}}
- name: spool-config
  configMap:
    name: {{ include "spool.fullname" . }}-config
- name: spool-secrets
  projected:
    defaultMode: 0444
    sources:
      - secret:
          name: {{ include "spool.databaseUrlSecret" . }}
          items:
            - key: {{ $v.databaseUrl.key }}
              path: database-url
      - secret:
          name: {{ include "spool.adminTokenSecret" . }}
          items:
            - key: {{ $v.adminToken.key }}
              path: admin-token
{{- with $v.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}
