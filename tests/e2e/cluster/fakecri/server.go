package main

import (
	"fmt"

	"google.golang.org/grpc"
	kubeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/util"
)

type server struct{ grpc *grpc.Server }

// newServer registers r itself (not the upstream RemoteRuntime it embeds) for both CRI
// services, so that its overriding methods are the ones served.
func newServer(r *runtime) *server {
	s := grpc.NewServer()
	kubeapi.RegisterRuntimeServiceServer(s, r)
	kubeapi.RegisterImageServiceServer(s, r)
	return &server{grpc: s}
}

func (s *server) start(endpoint string) error {
	l, err := util.CreateListener(endpoint)
	if err != nil {
		return fmt.Errorf("listen on %q: %w", endpoint, err)
	}
	go func() { _ = s.grpc.Serve(l) }()
	return nil
}

func (s *server) stop() { s.grpc.Stop() }
