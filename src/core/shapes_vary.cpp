#include "lowrank/core/shapes_vary.h"

namespace lowrank {
namespace {
thread_local bool t_shapes_vary = false;
}

ShapesVary::ShapesVary() : outer_(t_shapes_vary) { t_shapes_vary = true; }
ShapesVary::~ShapesVary() { t_shapes_vary = outer_; }
bool shapes_vary() { return t_shapes_vary; }

}  // namespace lowrank
