package discoverytest

// SharedPodsMesh is a mesh file (issue 11 item 2) whose Services share
// pods, a service account and target ports: payments (only frontend may
// call it) and status (no AccessPolicy: the mesh default, allow-mesh) are
// backed by different pods of service account shared on target port 8080;
// status also has port 81 (target port 8081) and a second pod, 10.0.1.3;
// the headless Service all selects the pods 10.0.1.1 and 10.0.1.2 and a
// pod of another service account, 10.0.1.9. The trust domain is
// cluster.local.
const SharedPodsMesh = `
trustDomain: cluster.local
services:
  - name: payments
    clusterIPs: [10.96.0.20]
    ports: [{port: 80, targetPort: 8080}]
    endpoints: [{address: 10.0.1.1, serviceAccount: shared}]
  - name: status
    clusterIPs: [10.96.0.21]
    ports: [{port: 80, targetPort: 8080}, {port: 81, targetPort: 8081}]
    endpoints: [{address: 10.0.1.2, serviceAccount: shared}, {address: 10.0.1.3, serviceAccount: shared}]
  - name: all
    ports: [{port: 8080}]
    endpoints: [{address: 10.0.1.1, serviceAccount: shared}, {address: 10.0.1.2, serviceAccount: shared}, {address: 10.0.1.9, serviceAccount: other}]
policies:
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: payments-from-frontend, namespace: default}
    spec:
      destination: {service: payments}
      sources: [{serviceAccount: {name: frontend}}]
`
