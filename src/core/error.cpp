#include "lowrank/core/error.h"

namespace lowrank {

void rethrow_with_context(const Error& e, const std::string& context) {
  throw Error(context + ": " + e.what());
}

}  // namespace lowrank
