#include "lowrank/core/shapes_vary.h"

#include <gtest/gtest.h>

#include <thread>

using namespace lowrank;

TEST(ShapesVary, ScopesNestAndStayOnTheirThread) {
  EXPECT_FALSE(shapes_vary());
  {
    const ShapesVary outer;
    EXPECT_TRUE(shapes_vary());
    bool other_thread = true;
    std::thread([&] { other_thread = shapes_vary(); }).join();
    EXPECT_FALSE(other_thread);
    {
      const ShapesVary inner;
      EXPECT_TRUE(shapes_vary());
    }
    EXPECT_TRUE(shapes_vary());  // the inner scope restores the outer one's state
  }
  EXPECT_FALSE(shapes_vary());
}
