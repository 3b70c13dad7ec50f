// Package discovery is Tether's service registry: the services of the mesh,
// their ports and endpoints, the identities the endpoints run as, and the
// AccessPolicy objects that say who may reach them. Sources report a whole
// State to a Registry, which validates it and installs a new immutable,
// versioned Snapshot; a rejected State leaves the last good Snapshot in
// place.
//
// # mesh.yaml
//
// The standalone default (no Kubernetes) reads the registry from a file,
// with FileSource polling it for changes. Every field is checked strictly:
// an unknown field is an error. A full example:
//
//	# Optional; the trust domain identities are derived in (default cluster.local).
//	trustDomain: cluster.local
//	# Optional: allow-mesh (default), same-namespace or deny. Applies to
//	# services that no AccessPolicy names.
//	defaultPolicy: allow-mesh
//	# Optional: enforce (default) or audit, the mode of the mesh default.
//	defaultPolicyMode: enforce
//	namespaces:
//	  # Per-namespace override, like the tether.dev/default-policy annotation.
//	  - name: payments
//	    defaultPolicy: same-namespace
//	    # Optional, like tether.dev/default-policy-mode: enforce or audit.
//	    defaultPolicyMode: enforce
//	services:
//	  - name: web
//	    namespace: default          # optional, default "default"
//	    clusterIPs: [10.96.0.10]    # optional; none means headless
//	    ports:
//	      - name: http              # optional DNS label
//	        port: 80                # the port callers dial and policies name
//	        targetPort: 8080        # optional, default port
//	        appProtocol: http       # optional
//	    endpoints:
//	      - address: 127.0.0.1
//	        port: 15006             # optional: the sidecar's inbound listener
//	        serviceAccount: web     # identity spiffe://cluster.local/ns/default/sa/web
//	  - name: api
//	    ports:
//	      - port: 8080
//	    endpoints:
//	      - address: 127.0.0.2
//	        identity: spiffe://cluster.local/ns/default/sa/api   # explicit identity
//	  - name: ledger
//	    namespace: payments
//	    ports:
//	      - port: 5432
//	    endpoints:
//	      - address: 127.0.0.3
//	        serviceAccount: ledger
//	remoteServices:
//	  # A service of another mesh (see RemoteService), in the key space of
//	  # services: not named like one of them.
//	  - name: pay
//	    namespace: default
//	    trustDomain: b.example      # required, not this mesh's
//	    addresses: [10.200.0.7]     # optional; none: one from 240.240.0.0/16
//	    ports:
//	      - port: 443
//	    endpoints:                  # the other mesh's sidecars
//	      - address: 192.0.2.10
//	        port: 15006             # required: the tether/1 inbound listener
//	        identity: spiffe://b.example/ns/pay/sa/api   # required, in trustDomain
//	policies:
//	  # AccessPolicy objects exactly as applied to Kubernetes.
//	  - apiVersion: tether.dev/v1alpha1
//	    kind: AccessPolicy
//	    metadata:
//	      name: api-from-web
//	      namespace: default
//	    spec:
//	      destination:
//	        service: api
//	        ports: [8080]
//	      sources:
//	        - serviceAccount:
//	            name: web
//	        - namespace: payments
//	        - spiffeID: spiffe://cluster.local/batch/report
//	      mode: Enforce   # optional: Enforce (default) or Audit
//
// With this file web may reach api (policy api-from-web), anything in the
// trust domain may reach web (mesh default allow-mesh), and only workloads of
// namespace payments may reach ledger (namespace default same-namespace).
package discovery
