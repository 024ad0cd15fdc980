// Command kuberay_names prints, for each name read from stdin (one per line), whether KubeRay v1.6.0
// accepts it as a RayService name: "ok NAME" or "refused NAME: <KubeRay's message>". It calls KubeRay's
// own ValidateRayServiceMetadata, so tests compare the BigModel CRD's name rule with the real one.
package main

import (
	"bufio"
	"fmt"
	"os"

	"github.com/ray-project/kuberay/ray-operator/controllers/ray/utils"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func main() {
	scanner := bufio.NewScanner(os.Stdin)
	for scanner.Scan() {
		name := scanner.Text()
		if err := utils.ValidateRayServiceMetadata(metav1.ObjectMeta{Name: name}); err != nil {
			fmt.Printf("refused %s: %v\n", name, err)
		} else {
			fmt.Printf("ok %s\n", name)
		}
	}
}
